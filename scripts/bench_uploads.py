#!/usr/bin/env python3
"""Benchmark: uploads and the server's memory, and a normal upload's wait during a flood.

1. Memory: 40 uploads of 22 MB at once with a made-up site_key, sent as the widget sends them
   (ids in the query string and the form) and as an older client would (ids in the form only).
   Prints the server's resident memory before, at its peak, and after.
2. Fairness: one address (127.0.0.2) keeps 30 small 40-megapixel PNGs in flight (retrying when
   told to wait); meanwhile another (127.0.0.1) uploads a small photo every second. Prints how
   long those normal uploads took.

Run: .venv/bin/python scripts/bench_uploads.py [--uploads 40] [--size-mb 22] [--flood 30]
A real server runs in its own process on 127.0.0.1. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_support import percentiles, server_process, status_of  # noqa: E402

BOUNDARY = "benchb0undary"


def form(site_key: str, session: str, image: bytes) -> bytes:
    parts = []
    for name, value in (("site_key", site_key), ("session_id", session)):
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 "Content-Type: image/png\r\n\r\n")
    return "".join(parts).encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


async def upload(port: int, query: str, body: bytes, *, source: str = "127.0.0.1",
                 piece: int = 256 * 1024) -> int:
    """POST one form; returns the status (0 when the connection broke before an answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write((f"POST /api/v1/chat/upload-image{query} HTTP/1.1\r\nHost: bench\r\n"
                      f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
        try:
            for start in range(0, len(body), piece):
                writer.write(body[start:start + piece])
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # refused before the whole body was sent: the answer may be waiting
        try:
            return status_of(await asyncio.wait_for(reader.read(), 120))
        except (ConnectionError, OSError):
            return 0
    finally:
        writer.close()


async def memory_run(server, count: int, size: int, ids_in_query: bool) -> dict[int, int]:
    fake_key, session = "sk_" + "madeup" * 5, "sess_" + "b" * 20
    body = form(fake_key, session, b"\0" * size)
    query = f"?site_key={fake_key}&session_id={session}" if ids_in_query else ""
    statuses = await asyncio.gather(*(upload(server.port, query, body) for _ in range(count)))
    return {s: statuses.count(s) for s in sorted(set(statuses))}


def forty_megapixel_png() -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("1", (8000, 5000)).save(out, format="PNG")
    return out.getvalue()


def small_jpeg() -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (800, 600), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


async def fairness_run(server, flood: int, seconds: float) -> None:
    site_key = server.site_key
    big = forty_megapixel_png()
    done = {"stored": 0, "told to wait": 0, "other": 0}
    stop = time.monotonic() + seconds

    async def flooder(n: int) -> None:
        session = f"sess_flood{n:012d}"
        body, query = form(site_key, session, big), f"?site_key={site_key}&session_id={session}"
        while time.monotonic() < stop:
            status = await upload(server.port, query, body, source="127.0.0.2")
            key = "stored" if status == 200 else "told to wait" if status in (429, 503) else "other"
            done[key] += 1
            if status != 200:
                await asyncio.sleep(0.2)

    floods = [asyncio.create_task(flooder(n)) for n in range(flood)]
    await asyncio.sleep(1)  # let the flood fill the queue first
    photo, timings, statuses = small_jpeg(), [], []
    while time.monotonic() < stop:
        session = f"sess_normal{len(timings):011d}"
        started = time.perf_counter()
        status = await upload(server.port, f"?site_key={site_key}&session_id={session}",
                              form(site_key, session, photo))
        timings.append(time.perf_counter() - started)
        statuses.append(status)
        await asyncio.sleep(1)
    await asyncio.gather(*floods)
    print(f"normal uploads during the flood: {percentiles(timings)}; statuses "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }")
    print(f"flood of {flood} 40-megapixel PNGs from one address: {done}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=40, help="uploads at once (default 40)")
    parser.add_argument("--size-mb", type=float, default=22, help="size of each, MB (default 22)")
    parser.add_argument("--flood", type=int, default=30, help="40-megapixel PNGs in flight (default 30)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the flood (default 20)")
    args = parser.parse_args()
    # The last run fits the largest site limit (20 MiB), so its bodies are read and spooled.
    for size_mb, ids_in_query in ((args.size_mb, True), (args.size_mb, False), (19, False)):
        with server_process() as server:
            before = server.memory_mb()[0]
            statuses = asyncio.run(memory_run(server, args.uploads, int(size_mb * 1_000_000),
                                              ids_in_query))
            after, peak = server.memory_mb()
            where = "query string and form" if ids_in_query else "form only"
            print(f"{args.uploads} x {size_mb:g} MB uploads, made-up site_key in the {where}: "
                  f"RSS {before:.0f} MB before, {peak:.0f} MB peak, {after:.0f} MB after; "
                  f"statuses {statuses}")
    with server_process() as server:
        asyncio.run(fairness_run(server, args.flood, args.seconds))
        print(f"server peak RSS during the flood: {server.memory_mb()[1]:.0f} MB")


if __name__ == "__main__":
    main()
