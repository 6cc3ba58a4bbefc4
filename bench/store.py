"""The store: visitor messages appended per second and history pages (the latest 50 messages)
read per second, with 1 and 50 concurrent writers or readers, through Parley's store interface.
Beside it, the ceiling: the same INSERT and SELECT run inline on one sqlite3 connection, one
transaction each, with no threads and no event loop, which is what the disk and SQLite allow.
The MongoDB store runs against PARLEY_BENCH_MONGO_URI when set, else against the nx-27017 stand-in
the tests use (a stand-in: its numbers are not MongoDB's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bench.common import markdown_table, ratio
from server.store.base import Store, StoreUnavailable
from server.store.sqlite import SCHEMA, SQLiteStore

TEXT = "Where is my order? It has been a week."
HISTORY_SEED = 60
PAGE = 50


async def for_a_while(worker: Callable[[int], Awaitable[None]], workers: int,
                      seconds: float) -> tuple[float, int]:
    """Run `workers` copies of `worker` back to back until `seconds` have passed: operations per
    second, and how many failed (the store answered StoreUnavailable, e.g. past its timeout)."""
    done, failed = [0], [0]
    deadline = time.perf_counter() + seconds

    async def loop(n: int) -> None:
        while time.perf_counter() < deadline:
            try:
                await worker(n)
                done[0] += 1
            except StoreUnavailable:
                failed[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(workers)))
    return done[0] / (time.perf_counter() - started), failed[0]


async def measure_store(store: Store, seconds: float, concurrency: list[int]) -> list[dict[str, Any]]:
    site = await store.create_site("sk_bench_store_000000000000", "bench", [], {})
    rows = []
    for workers in concurrency:
        conversations = [(await store.ensure_conversation(site.id, f"sess_store{workers:04d}{n:012d}", {})).id
                         for n in range(workers)]

        async def append(n: int) -> None:
            await store.add_message(conversations[n], "visitor", TEXT)

        async def read(n: int) -> None:
            await store.list_messages(conversations[n], limit=PAGE)

        appends, append_failures = await for_a_while(append, workers, seconds)
        for conversation in conversations:  # every history read returns a full page
            for _ in range(HISTORY_SEED):
                await store.add_message(conversation, "visitor", TEXT)
        reads, read_failures = await for_a_while(read, workers, seconds)
        rows.append({"concurrency": workers, "appends_per_s": round(appends, 1), "reads_per_s": round(reads, 1),
                     "failed": append_failures + read_failures})
    return rows


def measure_inline(path: Path, seconds: float) -> dict[str, Any]:
    """The same statements on one connection, in this thread: SQLite's own pace."""
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(SCHEMA)
    db.execute("INSERT INTO sites (site_key, name, created_at) VALUES ('sk_inline', 'inline', '')")
    db.execute("INSERT INTO conversations (site_id, session_id, created_at, updated_at)"
               " VALUES (1, 'sess_inline000000000000', '', '')")

    def append() -> None:
        db.execute("BEGIN IMMEDIATE")
        cur = db.execute("INSERT INTO messages (conversation_id, role, content, sources, status, created_at)"
                         " VALUES (1, 'visitor', ?, '[]', 'complete', ?)", (TEXT, time.time()))
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = 1", (time.time(),))
        db.execute("SELECT * FROM messages WHERE id = ?", (cur.lastrowid,)).fetchone()
        db.execute("COMMIT")

    def read() -> None:
        db.execute("SELECT * FROM messages WHERE conversation_id = 1 AND id > 0 ORDER BY id LIMIT ?",
                   (PAGE,)).fetchall()

    result = {}
    for name, operation in (("appends_per_s", append), ("reads_per_s", read)):
        count, deadline, started = 0, time.perf_counter() + seconds, time.perf_counter()
        while time.perf_counter() < deadline:
            operation()
            count += 1
        result[name] = round(count / (time.perf_counter() - started), 1)
    db.close()
    return {"concurrency": 1, **result}


async def run(quick: bool) -> dict[str, Any]:
    seconds = 2.0 if quick else 5.0
    concurrency = [1, 50]
    results: dict[str, Any] = {"seconds_per_measurement": seconds, "stores": {}}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        print("store: sqlite inline (the ceiling) ...", flush=True)
        results["stores"]["sqlite inline"] = [await asyncio.to_thread(measure_inline, Path(tmp) / "inline.sqlite3",
                                                                      seconds)]
        print("store: sqlite ...", flush=True)
        store = SQLiteStore(Path(tmp) / "parley.sqlite3")
        await store.open()
        try:
            results["stores"]["sqlite"] = await measure_store(store, seconds, concurrency)
        finally:
            await store.close()
    mongo = await measure_mongo(seconds, concurrency)
    if isinstance(mongo, str):
        results["notes"] = [mongo]
    else:
        name = "mongodb" if os.environ.get("PARLEY_BENCH_MONGO_URI") else "mongodb (nx-27017 stand-in)"
        results["stores"][name] = mongo
    return results


async def measure_mongo(seconds: float, concurrency: list[int]) -> list[dict[str, Any]] | str:
    """The MongoDB store against PARLEY_BENCH_MONGO_URI, or the nx-27017 stand-in the tests use."""
    try:
        from server.store.mongo import MongoStore
        from tests.mongo import start_stand_in
    except ImportError as exc:
        return f"MongoDB: not measured ({exc})."
    uri = os.environ.get("PARLEY_BENCH_MONGO_URI")
    stand_in = None
    logging.getLogger("server.store.mongo").setLevel(logging.CRITICAL)  # timeouts are counted instead
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        try:
            if not uri:
                stand_in = await asyncio.to_thread(start_stand_in, Path(tmp) / "nx-27017")
                uri = stand_in.database_uri("parley_bench")
            print("store: mongodb ...", flush=True)
            store = MongoStore(uri)
            await store.open()
            try:
                return await measure_store(store, seconds, concurrency)
            finally:
                await store.close()
        except (RuntimeError, OSError) as exc:
            return f"MongoDB: not measured ({exc})."
        finally:
            if stand_in is not None:
                stand_in.stop()


def tables(data: dict[str, Any]) -> str:
    inline = data["stores"]["sqlite inline"][0]
    rows = []
    for name, measured in data["stores"].items():
        for row in measured:
            rows.append([name, row["concurrency"], row["appends_per_s"],
                         ratio(row["appends_per_s"], inline["appends_per_s"]), row["reads_per_s"],
                         ratio(row["reads_per_s"], inline["reads_per_s"]), row.get("failed", 0)])
    table = markdown_table(["store", "writers / readers", "appends/s", "× inline", "history reads/s",
                            "× inline", "failed"], rows)
    return table + "".join(f"\n\n{note}" for note in data.get("notes", []))
