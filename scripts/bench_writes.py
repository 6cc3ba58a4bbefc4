#!/usr/bin/env python3
"""Benchmark: how long one store write takes, one after another, on the embedded SQLite store.

Writes --count operator messages (OperatorService.say, the dashboard's and the CLI's call) to 200
conversations, each after the one before has finished, at most --rate a second (0: as fast as they
go), in this process; the first --warmup are left out. Prints the latency percentiles, the largest
and the size of the write-ahead log at the end: the slowest writes are the ones that did other work
(a checkpoint of the log) on the way.

Run: .venv/bin/python scripts/bench_writes.py [--count 4000] [--rate 300]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.app import build_services  # noqa: E402
from server.config import Config  # noqa: E402

TEXT = "Hello there, how can I help you today? " * 3


async def run(count: int, warmup: int, rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="parley-bench-writes-") as tmp:
        config = dataclasses.replace(Config(data_dir=Path(tmp), port=0), log_level="WARNING")
        services = await build_services(config)
        try:
            site = await services.sites.create("bench")
            took: list[float] = []
            for n in range(count):
                started = time.perf_counter()
                await services.operators.say(site, f"sess_bench_writes_{n % 200:012d}", TEXT,
                                             operator_name="Bench")
                took.append(time.perf_counter() - started)
                if rate:
                    await asyncio.sleep(max(0.0, 1 / rate - took[-1]))
            wal = config.database_path.with_name(config.database_path.name + "-wal")
            wal_kb = wal.stat().st_size // 1024 if wal.exists() else 0
        finally:
            await services.close()
    timed = sorted(took[warmup:])

    def at(fraction: float) -> str:
        return f"{timed[min(len(timed) - 1, int(len(timed) * fraction))] * 1000:.2f}"

    print(f"| writes | rate/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | log KB |\n|---|---|---|---|---|---|---|---|\n"
          f"| {len(timed):,} | {rate or 'as fast as they go'} | {at(0.5)} | {at(0.9)} | {at(0.99)} | "
          f"{at(0.999)} | {timed[-1] * 1000:.2f} | {wal_kb:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4000, help="writes in all (default 4000)")
    parser.add_argument("--warmup", type=int, default=500, help="first writes left out (default 500)")
    parser.add_argument("--rate", type=float, default=0, help="writes a second at most (default: no pause)")
    args = parser.parse_args()
    if args.count <= args.warmup:
        parser.error("--count must be larger than --warmup")
    asyncio.run(run(args.count, args.warmup, args.rate))


if __name__ == "__main__":
    main()
