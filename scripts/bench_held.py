#!/usr/bin/env python3
"""Benchmark: how fast a held request wakes when an operator writes, in the same process (hub)
and from another process (the events feed), and how many held requests one process carries.

Run: .venv/bin/python scripts/bench_held.py [--held 2000] [--rounds 50]
Everything runs on 127.0.0.1 and stops by itself. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.app import build_services  # noqa: E402
from server.config import Config  # noqa: E402
from server.serve import start_http_server  # noqa: E402


def summary(label: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{label:<34} n={len(ms):5d}  p50={statistics.median(ms):7.2f} ms  "
          f"p95={ms[int(len(ms) * 0.95) - 1]:7.2f} ms  max={ms[-1]:7.2f} ms")


async def raw_get(port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    return response


async def wait_for_subscribers(services, count: int) -> None:
    deadline = time.monotonic() + 60
    while services.hub.subscriber_count < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held", type=int, default=2000, help="held requests at once (default 2000)")
    parser.add_argument("--rounds", type=int, default=50, help="wake-ups timed one by one (default 50)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.held * 3)), hard))

    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(Config(data_dir=Path(tmp), port=0), log_level="WARNING")
        services = await build_services(config)
        site = await services.sites.create("bench")
        server, port = start_http_server(services)

        def held(sid: str, wait: float = 25) -> asyncio.Task[bytes]:
            # Raw HTTP/1.1: a pooled client spends O(connections) per event and would measure
            # itself rather than the server.
            return asyncio.create_task(raw_get(
                port, f"/api/v1/chat/operator-messages?site_key={site.site_key}&session_id={sid}&wait={wait}"))

        async def time_wakes(writer, prefix: str) -> list[float]:
            """One held request at a time, woken by a message `writer` stores."""
            seconds = []
            for n in range(args.rounds):
                sid = f"sess_{prefix}{n:012d}"
                task = held(sid)
                await wait_for_subscribers(services, 1)
                started = time.perf_counter()
                await writer.operators.say(site, sid, "hello", operator_name="Ana")
                await task
                seconds.append(time.perf_counter() - started)
            return seconds

        summary("wake, same process", await time_wakes(services, "same"))
        # Another process: its own store connection and hub, so the wake-up can only
        # travel through the events feed that the server's bridge tails.
        other = await build_services(config)
        summary("wake, other process (events feed)", await time_wakes(other, "other"))
        await other.close()

        started = time.perf_counter()
        tasks = [held(f"sess_many{n:013d}") for n in range(args.held)]
        await wait_for_subscribers(services, args.held)
        print(f"{args.held} held requests established in {time.perf_counter() - started:.2f} s; "
              f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
              f"(client and server in one process)")
        started = time.perf_counter()
        for n in range(args.held):
            await services.operators.say(site, f"sess_many{n:013d}", "hi", operator_name="Ana")
        written = time.perf_counter() - started
        responses = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        print(f"stored {args.held} operator messages in {written:.2f} s while answering their waiters")
        ok = sum(1 for r in responses if r.startswith(b"HTTP/1.1 200") and b'"content":"hi"' in r)
        print(f"woke {ok}/{args.held} by writing one message each: {elapsed:.2f} s "
              f"({args.held / elapsed:.0f} operator messages stored and delivered per second)")
        server.stop()
        await services.close()


if __name__ == "__main__":
    asyncio.run(main())
