"""Benchmarks: `scripts/bench --help`. Each sub-benchmark runs its servers and its load generator
as separate processes on loopback, prints a Markdown table and writes JSON. Nothing here is a test."""
