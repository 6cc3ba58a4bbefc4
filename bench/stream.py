"""Streaming: C concurrent answers of TOKENS tokens from a paced fake model, side by side:
the upstream direct, a minimal Tornado relay (the ceiling), Parley (POST /api/v1/chat/stream) and
the LiteLLM proxy, each relaying the same upstream process.

Per server and C: answers completed per second; time to first chunk and how much the relay adds to
the upstream's own (p50/p99); the p99 gap between chunks as the client reads them; CPU seconds
of the server process per answer; its peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    Child,
    Sampler,
    children,
    cpu_seconds,
    free_port,
    markdown_table,
    python_module,
    ratio,
    start_child,
)
from bench.litellm_proxy import MASTER_KEY, ensure_litellm, litellm_command

TARGETS = ("upstream", "relay", "parley", "litellm")
TOKENS = 200
PACE = 0.01


def start_http_child(name: str, args: list[str], health_url: str, port: int, log: Path,
                     env: dict[str, str] | None = None, timeout: float = 180) -> Child:
    """Start a server that says nothing on stdout, and wait until `health_url` answers 200."""
    with log.open("ab") as sink:
        process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=sink, stderr=sink, env=env,
                                   text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}); its log: {log}\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return Child(name, process, {"port": port})
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise TimeoutError(f"{name} did not answer {health_url} within {timeout:g} s; log: {log}")


def start_parley(upstream_port: int, workdir: Path) -> tuple[Child, str]:
    data = workdir / "parley-data"
    created = subprocess.run(python_module("server", "site", "create", "--name", "bench", "--json",
                                           "--data-dir", data),
                             check=True, capture_output=True, text=True, timeout=120)
    site_key = json.loads(created.stdout)["site_key"]
    port = free_port()
    # The model name the fake lists, so Parley's check at start passes (with another name the
    # check's one-token completion is refused, and the upstream logs a 404 for it).
    child = start_http_child("parley", python_module(
        "server", "--data-dir", data, "--port", port, "--log-level", "WARNING",
        "--ai-base-url", f"http://127.0.0.1:{upstream_port}/v1", "--ai-model", "fake-model",
        "--ai-api-key", "sk-fake-upstream"), f"http://127.0.0.1:{port}/healthz", port,
        workdir / "parley.log")
    return child, site_key


async def cell(target: str, server: Child, upstream: Child, concurrency: int, seconds: float,
               site_key: str = "") -> dict[str, Any]:
    kind = "parley" if target in ("relay", "parley") else "openai"
    key = MASTER_KEY if target == "litellm" else ""
    server_cpu, upstream_cpu = cpu_seconds(server.pid), cpu_seconds(upstream.pid)
    with Sampler(server.pid) as memory:
        load = await asyncio.to_thread(start_child, "clients", python_module(
            "bench.load_stream", "--port", server.ready["port"], "--kind", kind, "--site-key", site_key,
            "--key", key, "--concurrency", concurrency, "--seconds", seconds,
            "--addresses", max(50, concurrency)), ready_timeout=seconds + 180)
    load.process.wait(10)
    result = dict(load.ready)
    completed = max(1, result["completed"])
    used = cpu_seconds(server.pid) - server_cpu
    result.update(target=target, concurrency=concurrency, peak_rss_mb=round(memory.peak_kb / 1024, 1),
                  cpu_ms_per_answer=round(used / completed * 1000, 2) if result["completed"] else None,
                  cpu_us_per_chunk=round(used / max(1, result["chunks"]) * 1e6, 1),
                  upstream_cpu_ms_per_answer=round((cpu_seconds(upstream.pid) - upstream_cpu) / completed * 1000, 2))
    if target == "upstream":
        result["cpu_ms_per_answer"] = result["upstream_cpu_ms_per_answer"]
        result["cpu_us_per_chunk"] = round((cpu_seconds(upstream.pid) - upstream_cpu) / max(1, result["chunks"]) * 1e6, 1)
    return result


async def run(quick: bool, concurrencies: list[int] | None, targets: list[str],
              tokens: int = TOKENS, seconds: float | None = None) -> dict[str, Any]:
    concurrencies = concurrencies or ([1, 100] if quick else [1, 100, 500])
    seconds = seconds or (5.0 if quick else 10.0)
    cells: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp, children() as procs:
        workdir = Path(tmp)
        upstream = start_child("upstream", python_module("bench.upstream", "--tokens", tokens,
                                                         "--pace", PACE))
        procs.append(upstream)
        upstream_port = upstream.ready["port"]
        for target in targets:
            site_key = ""
            if target == "upstream":
                server = upstream
            elif target == "relay":
                server = start_child("relay", python_module(
                    "bench.relay", "--upstream", f"http://127.0.0.1:{upstream_port}/v1/chat/completions"))
            elif target == "parley":
                server, site_key = start_parley(upstream_port, workdir)
            else:
                command, why = await asyncio.to_thread(ensure_litellm)
                if command is None:
                    notes.append(f"LiteLLM left out: {why}")
                    print(f"stream: {notes[-1]}", flush=True)
                    continue
                port = free_port()
                args, env = litellm_command(command, f"http://127.0.0.1:{upstream_port}/v1", port, workdir)
                try:
                    server = await asyncio.to_thread(
                        start_http_child, "litellm", args, f"http://127.0.0.1:{port}/health/liveliness",
                        port, workdir / "litellm.log", env)
                except (RuntimeError, TimeoutError) as exc:
                    notes.append(f"LiteLLM did not start: {str(exc)[:300]}")
                    print(f"stream: {notes[-1]}", flush=True)
                    continue
            if server is not upstream:
                procs.append(server)
            for concurrency in concurrencies:
                print(f"stream: {target} at C={concurrency} ...", flush=True)
                cells.append(await cell(target, server, upstream, concurrency, seconds, site_key))
            if server is not upstream:
                server.stop()
    return {"tokens": tokens, "pace_s": PACE, "seconds_per_cell": seconds,
            "concurrency": concurrencies, "cells": cells, "notes": notes}


def tables(data: dict[str, Any]) -> str:
    by_key = {(c["target"], c["concurrency"]): c for c in data["cells"]}
    rows = []
    for c in data["cells"]:
        base = by_key.get(("upstream", c["concurrency"]))
        relay = by_key.get(("relay", c["concurrency"]))
        first, gap = c["first_chunk_ms"], c["gap_ms"]

        def added(key: str) -> float | None:
            if base is None or first.get(key) is None or base["first_chunk_ms"].get(key) is None:
                return None
            return round(first[key] - base["first_chunk_ms"][key], 2)

        rows.append([c["target"], c["concurrency"], c["completed"], c["answers_per_s"],
                     ratio(c["answers_per_s"], relay["answers_per_s"]) if relay else None,
                     c["chunks_per_s"], first["p50"], first["p99"], added("p50"), added("p99"), gap["p99"],
                     c["cpu_ms_per_answer"], c["cpu_us_per_chunk"], c["peak_rss_mb"],
                     sum(c["failures"].values())])
    table = markdown_table(["server", "C", "answers", "answers/s", "× relay", "chunks/s",
                            "first chunk p50 ms", "p99 ms", "+p50 over upstream", "+p99 over upstream",
                            "gap p99 ms", "CPU ms/answer", "CPU µs/chunk", "peak RSS MB", "failed"], rows)
    notes = "".join(f"\n\n{note}" for note in data["notes"])
    return (f"{data['tokens']} tokens per answer, one every {data['pace_s'] * 1000:g} ms; "
            f"answers started for {data['seconds_per_cell']:g} s per cell.\n\n{table}{notes}")
