#!/usr/bin/env python3
"""Benchmark: gaps between SSE chunks as a client sees them, with and without TCP_NODELAY,
and connect times when many widgets reconnect at once, with a shallow and a deep listen backlog.

Run: .venv/bin/python scripts/bench_stream.py [--streams 20] [--chunks 40] [--connects 3000]
Everything runs on 127.0.0.1 and stops by itself. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tornado.httpserver  # noqa: E402
import tornado.netutil  # noqa: E402

from handlers.base import ApiHandler  # noqa: E402
from server.ai.base import AnswerRequest, Provider  # noqa: E402
from server.app import build_services, make_app  # noqa: E402
from server.config import Config  # noqa: E402


class TickingProvider(Provider):
    """Small chunks at a steady pace, like a model emitting tokens."""

    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks, self.interval = chunks, interval

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        for n in range(self.chunks):
            await asyncio.sleep(self.interval)
            yield f"tok{n} "


async def read_stream(port: int, site_key: str, n: int) -> list[float]:
    """Raw HTTP/1.1 so nothing but the kernel sits between the server and the clock."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"site_key": site_key, "session_id": f"sess_bench{n:016d}", "message": "hi"})
    writer.write((f"POST /api/v1/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    arrivals: list[float] = []
    buffer = b""
    while b'"type":"done"' not in buffer:
        data = await asyncio.wait_for(reader.read(65536), 30)
        if not data:
            break
        buffer += data
        arrivals.extend([time.perf_counter()] * data.count(b'"type":"chunk"'))
    writer.close()
    return [b - a for a, b in zip(arrivals, arrivals[1:])]


async def measure_gaps(args: argparse.Namespace, nodelay: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(Config(data_dir=Path(tmp)), sse_keepalive=15)
        services = await build_services(config)
        services.ai.default_provider = TickingProvider(args.chunks, args.interval)
        site = await services.sites.create("bench")
        original = ApiHandler.set_nodelay
        if not nodelay:
            ApiHandler.set_nodelay = lambda self: None  # type: ignore[method-assign]
        server = tornado.httpserver.HTTPServer(make_app(services))
        sock = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sock)
        port = sock[0].getsockname()[1]
        try:
            results = await asyncio.gather(*(read_stream(port, site.site_key, n) for n in range(args.streams)))
        finally:
            ApiHandler.set_nodelay = original  # type: ignore[method-assign]
            server.stop()
            await services.close()
    return [gap for gaps in results for gap in gaps]


async def measure_connects(backlog: int, count: int) -> tuple[float, float, int]:
    """Open `count` connections at once against a server that accepts them as fast as it can."""
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=backlog)
    port = sockets[0].getsockname()[1]
    accepted: list[socket.socket] = []
    stop_accepting = tornado.netutil.add_accept_handler(sockets[0], lambda conn, addr: accepted.append(conn))

    async def connect() -> float | None:
        started = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, TimeoutError):
            return None
        elapsed = time.perf_counter() - started
        writer.close()
        return elapsed

    times = await asyncio.gather(*(connect() for _ in range(count)))
    stop_accepting()
    for conn in accepted:
        conn.close()
    sockets[0].close()
    ok = sorted(t for t in times if t is not None)
    return statistics.median(ok), ok[int(len(ok) * 0.99) - 1], count - len(ok)


def describe(label: str, gaps: list[float]) -> None:
    ms = sorted(g * 1000 for g in gaps)
    over_30 = sum(1 for g in ms if g > 30)
    print(f"{label:<18} gaps={len(ms):5d}  p50={statistics.median(ms):6.2f} ms  "
          f"p99={ms[int(len(ms) * 0.99) - 1]:6.2f} ms  max={ms[-1]:6.2f} ms  over 30 ms: {over_30}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=20, help="concurrent SSE streams (default 20)")
    parser.add_argument("--chunks", type=int, default=40, help="chunks per answer (default 40)")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between chunks (default 0.005)")
    parser.add_argument("--connects", type=int, default=3000, help="simultaneous connects (default 3000)")
    args = parser.parse_args()
    print(f"SSE: {args.streams} streams x {args.chunks} chunks, one every {args.interval * 1000:g} ms")
    describe("TCP_NODELAY on", await measure_gaps(args, nodelay=True))
    describe("Nagle (default)", await measure_gaps(args, nodelay=False))
    print(f"\n{args.connects} connects at once:")
    for backlog in (128, 8192):
        with contextlib.suppress(OSError):
            median, p99, failed = await measure_connects(backlog, args.connects)
            print(f"backlog {backlog:>5}: median {median * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
                  f"failed {failed}")


if __name__ == "__main__":
    asyncio.run(main())
