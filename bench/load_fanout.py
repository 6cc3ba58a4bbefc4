"""The clients of the dashboard fan-out benchmark, in their own process: T operator tabs on the
live feed (`GET /dashboard/events`, one signed-in operator) and V visitors chatting
(`POST /api/v1/chat/stream`, each reading its answer to the end, then waiting its turn again).

Visitors send R messages a second between them, each from its own loopback address. Each tab
records the wall-clock time each visitor `message` event arrives, by event id. When the message
was stored comes from the server: Parley's events table (`--store-db`: the event is written in the
message's own transaction, with the time), the ceiling's `stored_at` in the event. Prints
{"ready": T} once every tab has its `ready` event, starts the visitors at once, and prints one JSON
result at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sqlite3
import time
from typing import Any

import httpx

from bench.common import loopback_addresses, raise_open_file_limit, summary_ms

PASSWORD = "bench fan-out password"
VISITOR_MARK = b'"role":"visitor"'


async def sign_in(port: int, email: str) -> str:
    """The dashboard's session cookie, signed in through the login form as a browser does."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        await client.get("/dashboard/login")
        response = await client.post("/dashboard/login", data={
            "email": email, "password": PASSWORD, "_xsrf": client.cookies.get("_xsrf") or ""})
        if response.status_code != 302:
            raise RuntimeError(f"sign-in refused: HTTP {response.status_code}")
        return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


class Fanout:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addresses = loopback_addresses(args.visitors)
        # visitor message event id -> when it was stored (the ceiling says), and when each tab got it
        self.stored_at: dict[int, float] = {}
        self.arrived: dict[int, list[float]] = collections.defaultdict(list)
        self.sent = 0
        self.tabs_ready = 0
        self.all_ready = asyncio.Event()
        self.failures: collections.Counter[str] = collections.Counter()
        self.answers = 0
        self.tab_events = 0
        self.writers: list[asyncio.StreamWriter] = []

    # -- tabs ---------------------------------------------------------------------------------
    async def tab(self, n: int, cookie: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.args.port, limit=1 << 22)
        self.writers.append(writer)
        writer.write((f"GET /dashboard/events HTTP/1.1\r\nHost: bench\r\nCookie: {cookie}\r\n"
                      "Accept: text/event-stream\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200":
            raise RuntimeError(f"tab {n}: HTTP {head[9:12].decode()}")
        buffer = b""
        ready = False
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            now = time.time()
            buffer += data
            # Events end with a blank line; the chunked encoding's size lines fall between them
            # and are skipped with every line that is not data.
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                event_id = None
                for line in event.split(b"\n"):
                    if line.startswith(b"id: "):
                        event_id = int(line[4:])
                    if not line.startswith(b"data: "):
                        continue
                    self.tab_events += 1
                    if not ready and b'"kind":"ready"' in line:
                        ready = True
                        self.tabs_ready += 1
                        if self.tabs_ready == self.args.tabs:
                            self.all_ready.set()
                    elif VISITOR_MARK in line and b'"kind":"message"' in line and event_id is not None:
                        self.arrived[event_id].append(now)
                        if b"stored_at" in line:
                            self.stored_at[event_id] = json.loads(line[6:])["stored_at"]

    # -- visitors -----------------------------------------------------------------------------
    def request(self, session_id: str, seq: int) -> bytes:
        body = json.dumps({"site_key": self.args.site_key, "session_id": session_id,
                           "message": f"Question {seq}: how long does shipping take?",
                           "message_id": f"m_fan{seq:08d}"})
        return (f"POST /api/v1/chat/stream HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

    async def ask(self, n: int, seq: int) -> None:
        session_id = f"sess_fanout{n:016d}"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.args.visitor_port or self.args.port, local_addr=(self.addresses[n], 0),
            limit=1 << 20)
        try:
            writer.write(self.request(session_id, seq))
            self.sent += 1
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                self.failures[f"HTTP {head[9:12].decode()}"] += 1
                return
            while await reader.read(65536):
                pass
            self.answers += 1
        finally:
            writer.close()

    async def visitor(self, n: int, started: float, deadline: float) -> None:
        # Each visitor asks every V/R seconds, the visitors' turns spread evenly over that period.
        period = self.args.visitors / self.args.rate
        next_at = started + period * n / self.args.visitors
        seq = 0
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            seq += 1
            try:
                await asyncio.wait_for(self.ask(n, seq), 60)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
            next_at += period

    def delays(self) -> tuple[list[float], int, int]:
        """Store-to-tab delays; how many (message, tab) deliveries were expected and missing.
        The messages are those any tab saw (each tab should see every one)."""
        stored_at = dict(self.stored_at)
        if self.args.store_db:
            with sqlite3.connect(f"file:{self.args.store_db}?mode=ro", uri=True) as db:
                ids = sorted(self.arrived)
                for start in range(0, len(ids), 500):
                    part = ids[start:start + 500]
                    stored_at.update(db.execute(
                        f"SELECT id, created_at FROM events WHERE id IN ({','.join('?' * len(part))})",
                        part).fetchall())
        delays, expected, missing = [], 0, 0
        for event_id, arrivals in self.arrived.items():
            expected += self.args.tabs
            missing += max(0, self.args.tabs - len(arrivals))
            if event_id in stored_at:
                delays += [arrived - stored_at[event_id] for arrived in arrivals]
        return delays, expected, missing


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--visitor-port", type=int,
                        help="visitors chat with the server on this port (another process); default --port")
    parser.add_argument("--site-key", required=True)
    parser.add_argument("--email", required=True, help="the operator the tabs sign in as")
    parser.add_argument("--tabs", type=int, required=True)
    parser.add_argument("--visitors", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="visitor messages a second, in all")
    parser.add_argument("--seconds", type=float, required=True, help="visitors send for this long")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait for the last events")
    parser.add_argument("--ceiling", action="store_true", help="the ceiling server: no sign-in")
    parser.add_argument("--store-db", help="Parley's SQLite file, read for when each event was stored")
    args = parser.parse_args()
    raise_open_file_limit()
    fanout = Fanout(args)
    cookie = "" if args.ceiling else await sign_in(args.port, args.email)
    tabs = [asyncio.create_task(fanout.tab(n, cookie)) for n in range(args.tabs)]
    await asyncio.wait_for(fanout.all_ready.wait(), 60)
    print(json.dumps({"ready": args.tabs}), flush=True)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(fanout.visitor(n, started, started + args.seconds)
                           for n in range(args.visitors)))
    sending = time.perf_counter() - started
    await asyncio.sleep(args.settle)
    for task in tabs:
        task.cancel()
    for writer in fanout.writers:
        writer.close()
    used = resource.getrusage(resource.RUSAGE_SELF)
    delays, expected, missing = fanout.delays()
    stored = len(fanout.arrived)
    result: dict[str, Any] = {
        "sent": fanout.sent,
        "stored": stored,
        "stored_per_s": round(stored / args.seconds, 1),
        "sending_s": round(sending, 1),
        "answers": fanout.answers,
        "deliveries": len(delays),
        "expected": expected,
        "missing": missing,
        "delay_ms": summary_ms(delays),
        "tab_events": fanout.tab_events,
        "failures": dict(fanout.failures),
        "client_cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
