#!/usr/bin/env python3
"""Benchmark: how long the Numbers page's aggregation takes on a busy site.

Fills a fresh SQLite store with --conversations conversations spread over the last year (a visitor
question and an AI answer each; every fifth handed off, most of those answered by an operator; a
third rated), then times Store.site_activity over 30 and 366 days and the knowledge gaps' reads.

Run: .venv/bin/python scripts/bench_numbers.py [--conversations 5000] [--repeat 5]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import server.store.sqlite as sqlite_module  # noqa: E402
from server.store.models import ISO_FORMAT  # noqa: E402
from server.store.sqlite import SQLiteStore  # noqa: E402


class Clock:
    """The time the store writes, set by the filler (the store reads utc_now_iso)."""

    def __init__(self) -> None:
        self.at = datetime.now(timezone.utc)

    def __call__(self) -> str:
        return self.at.strftime(ISO_FORMAT)

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


async def fill(store: SQLiteStore, site_id: int, conversations: int, clock: Clock) -> int:
    rng = random.Random(7)
    start = datetime.now(timezone.utc) - timedelta(days=365)
    messages = 0
    for n in range(conversations):
        clock.at = start + timedelta(seconds=rng.uniform(0, 365 * 86400))
        conversation = await store.ensure_conversation(site_id, f"sess_bench{n:012d}", {})
        await store.add_message(conversation.id, "visitor", f"Question {n % 300} about orders",
                                message_id="m_1")
        clock.advance(2)
        await store.add_message(conversation.id, "ai", "An answer.", reply_to="m_1",
                                relevance=rng.random())
        messages += 2
        if n % 5 == 0:
            await store.update_conversation(conversation.id, {"handoff": True})
            if rng.random() < 0.8:
                clock.advance(rng.uniform(10, 900))
                await store.add_message(conversation.id, "operator", "Hello, I am here.",
                                        operator_name="Ana")
                messages += 1
        if n % 3 == 0:
            await store.update_conversation(conversation.id, {"rating": rng.randint(1, 5)})
    return messages


async def timed(repeat: int, call) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=5000, help="conversations to make (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each read (default 5)")
    args = parser.parse_args()
    clock = Clock()
    real_clock = sqlite_module.utc_now_iso
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteStore(Path(directory) / "parley.sqlite3")
        await store.open()
        try:
            site = await store.create_site("sk_bench_numbers_000000000", "Bench", [], {})
            sqlite_module.utc_now_iso = clock  # type: ignore[assignment]
            started = time.perf_counter()
            messages = await fill(store, site.id, args.conversations, clock)
            sqlite_module.utc_now_iso = real_clock
            print(f"filled {args.conversations} conversations, {messages} messages "
                  f"in {time.perf_counter() - started:.1f} s")
            now = datetime.now(timezone.utc)
            for days in (30, 366):
                since = (now - timedelta(days=days)).strftime(ISO_FORMAT)
                until = (now + timedelta(days=1)).strftime(ISO_FORMAT)
                numbers = await store.site_activity(site.id, since=since, until=until)
                median, worst = await timed(args.repeat, lambda: store.site_activity(site.id, since=since,
                                                                                     until=until))
                print(f"site_activity over {days:3d} days: median {median:6.1f} ms, max {worst:6.1f} ms "
                      f"({numbers.conversations} conversations, {numbers.handoffs} handoffs, "
                      f"median wait {numbers.median_first_reply} s, {len(numbers.messages_by_hour)} hour rows)")
            median, worst = await timed(args.repeat, lambda: store.handoff_questions(site.id, limit=200))
            print(f"handoff_questions (200):      median {median:6.1f} ms, max {worst:6.1f} ms")
            median, worst = await timed(args.repeat, lambda: store.knowledge_gaps(site.id, below=0.45, limit=500))
            print(f"knowledge_gaps (500):         median {median:6.1f} ms, max {worst:6.1f} ms")
        finally:
            sqlite_module.utc_now_iso = real_clock
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
