"""The dashboard's inbox on a big SQLite store: 100,000 conversations (10,000 with --quick) of four
messages each, written straight into the database file, then the inbox's reads through the store
interface as an operator's page makes them: the first page, a filter, and full-text searches (FTS5)
for a rare word, a common word and a prefix. Median and worst of repeated reads, in milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import markdown_table
from server.store.sqlite import SQLiteStore

WORDS = ("order", "shipping", "refund", "size", "colour", "delivery", "parcel", "return", "invoice",
         "discount", "jacket", "boots", "tent", "warranty", "exchange", "tracking", "address")
REPEATS = 15


def seed(path: Path, conversations: int) -> int:
    """Write the conversations and their messages in a few big transactions."""
    store_schema = SQLiteStore(path)
    asyncio.run(_open_close(store_schema))  # creates the schema, FTS5 table and triggers
    db = sqlite3.connect(path)
    rng = random.Random(7)
    db.execute("INSERT INTO sites (site_key, name, created_at) VALUES ('sk_bench_inbox_0000000000000', 'b', '')")
    stamp = "2026-11-{:02d}T{:02d}:{:02d}:{:02d}Z"
    messages = 0
    for start in range(0, conversations, 10_000):
        batch = range(start, min(start + 10_000, conversations))
        with db:
            for n in batch:
                when = stamp.format(1 + n % 28, n % 24, n % 60, (n // 60) % 60)
                cur = db.execute(
                    "INSERT INTO conversations (site_id, session_id, mode, handoff, created_at, updated_at)"
                    " VALUES (1, ?, ?, ?, ?, ?)",
                    (f"sess_bench{n:016d}", "ai" if n % 5 else "operator", int(n % 17 == 0), when, when))
                rows = []
                for m in range(4):
                    text = " ".join(rng.choice(WORDS) for _ in range(8))
                    if n == conversations // 2 and m == 0:
                        text += " zanzibar"  # the rare word, in one conversation
                    rows.append((cur.lastrowid, "visitor" if m % 2 == 0 else "ai", text, when))
                db.executemany("INSERT INTO messages (conversation_id, role, content, created_at)"
                               " VALUES (?, ?, ?, ?)", rows)
                messages += len(rows)
    db.close()
    return messages


async def _open_close(store: SQLiteStore) -> None:
    await store.open()
    await store.close()


async def time_reads(path: Path) -> list[dict[str, Any]]:
    store = SQLiteStore(path)
    await store.open()
    cases = [("first page (50)", {}), ("needs a human", {"status": "handoff"}),
             ("with operator", {"status": "operator"}), ("search: rare word", {"search": "zanzibar"}),
             ("search: common word", {"search": "refund"}), ("search: two words", {"search": "tent warranty"}),
             ("search: prefix", {"search": "trac"})]
    results = []
    try:
        for label, options in cases:
            times, found = [], 0
            for _ in range(REPEATS):
                started = time.perf_counter()
                found = len(await store.list_inbox([1], **options))
                times.append((time.perf_counter() - started) * 1000)
            results.append({"read": label, "found": found, "median_ms": statistics.median(times),
                            "max_ms": max(times)})
    finally:
        await store.close()
    return results


async def run(quick: bool) -> dict[str, Any]:
    conversations = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "parley.sqlite3"
        started = time.perf_counter()
        messages = await asyncio.to_thread(seed, path, conversations)
        seeded = time.perf_counter() - started
        reads = await time_reads(path)
        size = path.stat().st_size
    return {"conversations": conversations, "messages": messages, "seed_seconds": round(seeded, 1),
            "database_mb": round(size / 1e6, 1), "reads": reads}


def tables(data: dict[str, Any]) -> str:
    head = (f"{data['conversations']:,} conversations, {data['messages']:,} messages, "
            f"{data['database_mb']} MB (seeded in {data['seed_seconds']} s)\n\n")
    return head + markdown_table(("inbox read", "rows", "median ms", "max ms"),
                                 [(r["read"], r["found"], r["median_ms"], r["max_ms"]) for r in data["reads"]])
