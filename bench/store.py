"""The store: visitor messages appended per second and history pages (the latest 50 messages)
read per second, with 1 and 50 concurrent writers or readers, through Parley's store interface.
Beside it, the ceiling: the same INSERT and SELECT run inline on one sqlite3 connection, one
transaction each, with no threads and no event loop, which is what the disk and SQLite allow.
A MongoDB store, when one exists in server/store/, is measured against the nx-27017 stand-in
when that is installed (it is not MongoDB's speed).
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bench.common import markdown_table, ratio
from server.store.base import Store
from server.store.sqlite import SCHEMA, SQLiteStore

TEXT = "Where is my order? It has been a week."
HISTORY_SEED = 100
PAGE = 50


async def for_a_while(worker: Callable[[int], Awaitable[None]], workers: int, seconds: float) -> float:
    """Run `workers` copies of `worker` back to back until `seconds` have passed: operations per second."""
    done = [0]
    deadline = time.perf_counter() + seconds

    async def loop(n: int) -> None:
        while time.perf_counter() < deadline:
            await worker(n)
            done[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(workers)))
    return done[0] / (time.perf_counter() - started)


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

        appends = await for_a_while(append, workers, seconds)
        for conversation in conversations:  # every history read returns a full page
            for _ in range(HISTORY_SEED):
                await store.add_message(conversation, "visitor", TEXT)
        reads = await for_a_while(read, workers, seconds)
        rows.append({"concurrency": workers, "appends_per_s": round(appends, 1), "reads_per_s": round(reads, 1)})
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
        results["stores"]["mongodb (nx-27017 stand-in)"] = mongo
    return results


async def measure_mongo(seconds: float, concurrency: list[int]) -> list[dict[str, Any]] | str:
    try:
        from server.store import mongo  # noqa: F401
    except ImportError:
        return "MongoDB: no server/store/mongo.py in this tree yet; not measured."
    return "MongoDB: not wired into the benchmark yet."


def tables(data: dict[str, Any]) -> str:
    inline = data["stores"]["sqlite inline"][0]
    rows = []
    for name, measured in data["stores"].items():
        for row in measured:
            rows.append([name, row["concurrency"], row["appends_per_s"],
                         ratio(row["appends_per_s"], inline["appends_per_s"]), row["reads_per_s"],
                         ratio(row["reads_per_s"], inline["reads_per_s"])])
    table = markdown_table(["store", "writers / readers", "appends/s", "× inline", "history reads/s",
                            "× inline"], rows)
    return table + "".join(f"\n\n{note}" for note in data.get("notes", []))
