"""The visitors of the held-request benchmark, in their own process: N sessions each holding
`GET operator-messages?wait=30` over a kept-alive connection, asking again (with `after`) as soon as
an answer comes. Each message's text carries its phase and the time its write began; the delay to
its arrival here is recorded per phase.

Prints {"sent": N} once every visitor has sent its first request, then waits for a line `leave` on
stdin, closes every connection at once, and prints the delays.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import Any

from bench.common import bench_session, loopback_addresses, raise_open_file_limit, summary_ms

CONNECTS_AT_ONCE = 200


class Visitors:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addresses = loopback_addresses(args.addresses)
        self.delays: dict[str, list[float]] = collections.defaultdict(list)
        self.statuses: collections.Counter[int] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.sent_first = 0
        self.all_sent = asyncio.Event()
        self.connect_slots = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self.writers: list[asyncio.StreamWriter] = []

    def target(self, session_id: str, after: int) -> bytes:
        query = f"site_key={self.args.site_key}&session_id={session_id}&wait={self.args.wait:g}"
        if after:
            query += f"&after={after}"
        return (f"GET /api/v1/chat/operator-messages?{query} HTTP/1.1\r\n"
                f"Host: bench\r\n\r\n").encode()

    async def visit(self, n: int) -> None:
        session_id = bench_session(n)
        async with self.connect_slots:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.args.port, local_addr=(self.addresses[n % len(self.addresses)], 0),
                    limit=1 << 20)
            except OSError as exc:
                self.failures[type(exc).__name__] += 1
                self._count_sent()
                return
        self.writers.append(writer)
        after, first = 0, True
        while True:
            writer.write(self.target(session_id, after))
            if first:
                first = False
                self._count_sent()
            try:
                status, body = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.failures[type(exc).__name__] += 1
                return
            arrived = time.time()
            self.statuses[status] += 1
            if status != 200:
                await asyncio.sleep(1)
                continue
            for message in json.loads(body)["messages"]:
                after = max(after, message["id"])
                phase, _, stamp = message["content"].partition(" ")
                with_stamp = stamp.replace(".", "", 1).isdigit()
                if with_stamp:
                    self.delays[phase].append(arrived - float(stamp))

    def _count_sent(self) -> None:
        self.sent_first += 1
        if self.sent_first >= self.args.sessions:
            self.all_sent.set()

    def leave(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    def results(self) -> dict[str, Any]:
        return {"phases": {phase: summary_ms(d) for phase, d in self.delays.items()},
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "failures": dict(self.failures)}


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--site-key", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--addresses", type=int, default=64)
    parser.add_argument("--wait", type=float, default=30)
    args = parser.parse_args()
    raise_open_file_limit()
    visitors = Visitors(args)
    tasks = [asyncio.create_task(visitors.visit(n)) for n in range(args.sessions)]
    await visitors.all_sent.wait()
    print(json.dumps({"sent": visitors.sent_first, "failures": dict(visitors.failures)}), flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("leave", ""):
        pass
    visitors.leave()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(visitors.results()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
