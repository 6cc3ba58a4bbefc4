#!/usr/bin/env python3
"""Benchmark: request bodies the server did not ask for, and its memory.

For each route, N connections from one address each announce a large body (Content-Length) and
send all of it but its last byte, then wait: the server's resident memory shows how much of those
bodies it keeps while it waits for the rest. Then a few whole requests show what a client is
answered (status, or "reset" when the connection broke before an answer).

Run: .venv/bin/python scripts/bench_bodies.py [--connections 100] [--size-mb 20] [--paths ...]
A real server runs in its own process on 127.0.0.1. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_support import server_process, status_of  # noqa: E402

PATHS = ("/healthz", "/dashboard/login", "/api/v1/chat/email", "/no-such-page")
PIECE = 256 * 1024


def head(path: str, size: int, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()


async def send_body(writer: asyncio.StreamWriter, size: int) -> bool:
    """Send `size` zero bytes; False when the server closed the connection first."""
    piece = b"\0" * PIECE
    try:
        for start in range(0, size, PIECE):
            writer.write(piece[:min(PIECE, size - start)])
            await writer.drain()
    except (ConnectionError, OSError):
        return False
    return True


async def hold(port: int, path: str, size: int, count: int) -> tuple[list[asyncio.StreamWriter], int]:
    """Open `count` connections that send all but the last byte of their body; return them and
    how many the server closed before taking the body."""
    writers: list[asyncio.StreamWriter] = []

    async def one() -> bool:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(head(path, size))
        return await send_body(writer, size - 1)

    sent = await asyncio.gather(*(one() for _ in range(count)))
    return writers, sent.count(False)


async def settled_rss(server, seconds: float = 20.0) -> float:
    """The server's RSS once it has stopped growing for 2 s (or after `seconds`)."""
    deadline, last, still_since = time.monotonic() + seconds, 0.0, time.monotonic()
    while time.monotonic() < deadline:
        now = server.memory_mb()[0]
        if abs(now - last) > 1:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 2:
            break
        await asyncio.sleep(0.25)
    return server.memory_mb()[0]


async def answer(port: int, path: str, size: int, method: str = "POST") -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(path, size, method))
        await send_body(writer, size)
        try:
            data = await asyncio.wait_for(reader.read(), 60)
        except (ConnectionError, OSError):
            return "reset"
        if not data:
            return "closed without an answer"
        body = data.partition(b"\r\n\r\n")[2][:100].decode(errors="replace")
        return f"{status_of(data)} {body!r}"
    finally:
        writer.close()


async def run(server, paths: list[str], count: int, size: int) -> None:
    for path in paths:
        before = server.memory_mb()[0]
        writers, refused = await hold(server.port, path, size, count)
        held = await settled_rss(server)
        for writer in writers:
            writer.close()
        after = await settled_rss(server, 10)
        print(f"{path}: {count} x {size / 1e6:g} MB bodies held: RSS {before:.0f} MB before, "
              f"{held:.0f} MB while held (+{held - before:.0f}), {after:.0f} MB after; "
              f"{refused} closed by the server before the body was sent")
        print(f"  a whole {size / 1e6:g} MB POST is answered: {await answer(server.port, path, size)}")
        print(f"  a GET with a {size / 1e6:g} MB body is answered: "
              f"{await answer(server.port, path, size, 'GET')}")
    print(f"server peak RSS: {server.memory_mb()[1]:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100, help="connections at once (default 100)")
    parser.add_argument("--size-mb", type=float, default=20, help="body announced by each, MB (default 20)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), help=f"routes (default {' '.join(PATHS)})")
    args = parser.parse_args()
    with server_process() as server:
        asyncio.run(run(server, args.paths, args.connections, int(args.size_mb * 1_000_000)))


if __name__ == "__main__":
    main()
