#!/usr/bin/env python3
"""Benchmark: how long a normal request takes while one address sends a burst of held requests.

A real server runs in its own process. One client process opens --burst held history requests
(wait=30, each for its own session, all from 127.0.0.2) as fast as it can; meanwhile this process
times a normal request (history without wait, from 127.0.0.1: another client) every 100 ms, before,
during and after the burst. Past the server's per-address caps (held requests, open connections)
the burst is answered 429.
With --ghosts, each burst request is closed 0.3 s after it is sent, and the script counts how many
the server still holds afterwards.

Run: .venv/bin/python scripts/bench_held_burst.py [--burst 3000] [--ghosts]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_support import (  # noqa: E402
    get_request,
    percentiles,
    raise_fd_limit,
    raw_request,
    server_process,
    status_of,
)


BURST_FROM = "127.0.0.2"


def history(site_key: str, session: str, wait: float = 0) -> bytes:
    return get_request(f"/api/v1/chat/history?site_key={site_key}&session_id={session}&wait={wait}")


async def ghost(port: int, request: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(BURST_FROM, 0))
    writer.write(request)
    await asyncio.sleep(0.3)
    writer.close()


async def burst(port: int, site_key: str, count: int, ghosts: bool) -> None:
    requests = [history(site_key, f"sess_burst{n:014d}", wait=30) for n in range(count)]
    if ghosts:
        await asyncio.gather(*(ghost(port, r) for r in requests), return_exceptions=True)
        return
    responses = await asyncio.gather(*(raw_request(port, r, timeout=60, source=BURST_FROM) for r in requests),
                                     return_exceptions=True)
    statuses: dict[object, int] = {}
    for response in responses:
        key = status_of(response) if isinstance(response, bytes) else type(response).__name__
        statuses[key] = statuses.get(key, 0) + 1
    print(f"burst responses by status: {dict(sorted(statuses.items(), key=str))}", flush=True)


def run_burst(port: int, site_key: str, count: int, ghosts: bool) -> None:
    raise_fd_limit()
    asyncio.run(burst(port, site_key, count, ghosts))


async def probe(port: int, site_key: str, seconds: float) -> list[float]:
    timings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = await raw_request(port, history(site_key, "sess_normal0000000000"))
        if status_of(response) == 200:
            timings.append(time.perf_counter() - started)
        await asyncio.sleep(0.1)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=3000, help="held requests in the burst (default 3000)")
    parser.add_argument("--ghosts", action="store_true", help="close each burst request after 0.3 s")
    args = parser.parse_args()
    with server_process() as server:
        print(f"normal request, idle:         {percentiles(asyncio.run(probe(server.port, server.site_key, 2)))}")
        sender = multiprocessing.Process(target=run_burst,
                                         args=(server.port, server.site_key, args.burst, args.ghosts))
        started = time.perf_counter()
        cpu_before = server.cpu_seconds()
        sender.start()
        during = asyncio.run(probe(server.port, server.site_key, 8))
        print(f"normal request, during burst: {percentiles(during)}")
        if args.ghosts:
            sender.join(60)
            print(f"ghost burst sent and closed in {time.perf_counter() - started:.1f} s")
            rss, peak = server.memory_mb()
            print(f"server memory after the ghosts left: {rss:.0f} MB (peak {peak:.0f} MB)")
            # A held ghost would still count against the address: a fresh held request shows it.
            response = asyncio.run(raw_request(server.port, history(server.site_key, "sess_after000000000000",
                                                                    wait=0.5), source=BURST_FROM))
            print(f"a held request from the same address afterwards: HTTP {status_of(response)}")
        else:
            sender.join(90)
        print(f"server CPU time spent on the burst: {server.cpu_seconds() - cpu_before:.2f} s "
              f"(of {time.perf_counter() - started:.1f} s wall-clock)")
        rss, peak = server.memory_mb()
        print(f"server memory: {rss:.0f} MB now, {peak:.0f} MB at peak")


if __name__ == "__main__":
    main()
