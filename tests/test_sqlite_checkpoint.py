"""SQLite's write-ahead log is copied into the database file in the background, not inside the
commit that happens to cross SQLite's threshold (which made that write ~20 times slower)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

from server.store import sqlite as sqlite_store
from server.store.sqlite import SQLiteStore
from tests.waiting import eventually

SESSION = "sess_checkpoint_test_000000001"


def messages_in_the_database_file_alone(database: Path, scratch: Path) -> int:
    """What a reader of the database file would find without its log: what was checkpointed."""
    with tempfile.TemporaryDirectory(dir=scratch) as copies:
        copy = Path(copies) / "copy.sqlite3"
        shutil.copyfile(database, copy)
        db = sqlite3.connect(copy)
        try:
            return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        except sqlite3.OperationalError:  # not even the tables are there yet
            return 0
        finally:
            db.close()


async def test_the_log_is_copied_into_the_database_file_in_the_background(tmp_path):
    database = tmp_path / "parley.sqlite3"
    store = SQLiteStore(database, checkpoint_interval=0.02)
    await store.open()
    try:
        site = await store.create_site("sk_checkpoint_test_key_00000001", "Shop", [], {"lang": "en"})
        for n in range(40):  # a few hundred pages: far below the threshold of a commit's own checkpoint
            await store.add_operator_message(site.id, SESSION, f"message {n}", operator_name="Ana",
                                             events=lambda message: [], origin="test")
        await eventually(lambda: messages_in_the_database_file_alone(database, tmp_path) == 40,
                         what="all 40 messages copied from the log into the database file")
        frames, copied = store.last_checkpoint or (0, 0)
        assert frames > 0 and copied == frames
    finally:
        await store.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sqlite-checkpoint")]



def log_pages(database: Path) -> int:
    """How long the write-ahead log file is, in pages (it keeps its length when it starts over)."""
    log = database.with_name(database.name + "-wal")
    return max(0, log.stat().st_size - 32) // (4096 + 24) if log.exists() else 0


async def test_the_log_starts_over_while_writes_keep_coming(tmp_path, monkeypatch):
    """A write starts the log over only if it begins with all of the log copied, which a busy
    writer never does while the background checkpoint runs beside it: the file would grow for as
    long as the writes kept coming."""
    monkeypatch.setattr(sqlite_store, "RESTART_LOG_PAGES", 200)
    database = tmp_path / "parley.sqlite3"
    store = SQLiteStore(database, checkpoint_interval=0.01)
    await store.open()
    try:
        site = await store.create_site("sk_checkpoint_test_key_00000002", "Shop", [], {"lang": "en"})
        for n in range(600):  # ~15 pages each: ~9,000 pages without a new start
            await store.add_operator_message(site.id, f"sess_checkpoint_test_{n % 50:09d}", f"message {n}",
                                             operator_name="Ana", events=lambda message: [], origin="test")
        assert log_pages(database) < 3000
    finally:
        await store.close()
