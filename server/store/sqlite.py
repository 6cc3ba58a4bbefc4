"""The embedded default store: one SQLite file in WAL mode, off the event loop.

Writes run on one thread that owns the writing connection, each public method one transaction, so
writers never contend within a process. Reads run on a small pool of threads, each with its own
read-only connection: WAL lets them read a consistent snapshot while the writer writes, so a burst
of reads (thousands of held requests arriving at once) does not queue behind writes, nor a normal
request's read behind a thousand others on one thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from server.store.base import (
    DuplicateMessageId,
    DuplicateOperator,
    Events,
    Store,
    StoreUnavailable,
    TakenQuestion,
    check_presence,
)
from server.store.models import (
    CONVERSATION_UPDATABLE,
    FETCH_JOB_UPDATABLE,
    OPERATOR_UPDATABLE,
    QUIET_CONVERSATION_FIELDS,
    AuditEntry,
    CannedReply,
    Conversation,
    InboxEntry,
    Note,
    Operator,
    OperatorSession,
    Event,
    FetchJob,
    KnowledgeDocument,
    KnowledgeGap,
    Message,
    ProactiveMessage,
    Site,
    Source,
    SiteActivity,
    FIRST_MESSAGE_FIELD,
    utc_now_iso,
    check_handoff,
)
from server.store.doorbell import Doorbell
from server.store.groups import GroupCommit, WriterBusy
from server.store.threads import StoreThreads

log = logging.getLogger(__name__)
T = TypeVar("T")
W = TypeVar("W")

# Prepared statements kept per connection (Python's default is 128). Batched writes have a shape
# for each count of rows (up to GROUP_MAX), and preparing one anew costs CPU and a turn at the GIL.
CACHED_STATEMENTS = 512

# Reader threads (and connections), at most. One reads while it keeps up; more start only while
# it is stuck on a slow read (a search), since readers side by side contend for the GIL
# (server/store/threads.py). SQLite releases the GIL while it searches, so a few overlap well.
READERS = 4
# How long the readiness probe waits for the write lock (writes wait busy_timeout_ms).
PROBE_BUSY_TIMEOUT_MS = 1000
# The write-ahead log is copied into the database in the background, from a connection of its own
# (a PASSIVE checkpoint: writers go on appending meanwhile), this often while anything was written.
# SQLite's own checkpoint would run inside the commit that crosses its threshold (1,000 pages by
# default), which then takes ~5 ms instead of ~0.3 (it syncs the disk twice): the slowest 1 % of
# writes, each a visitor's question or an operator's message. And small writes commit on the event
# loop (server/store/groups.py), where every visitor would wait for it. So no commit checkpoints.
CHECKPOINT_INTERVAL = 0.1
# The log starts over from its beginning only when a write begins with all of it copied, which a
# busy writer never does while the background checkpoint runs beside it. Past this many pages, and
# all of them copied, the writer thread copies the last few itself: the writes meanwhile queue
# behind it, and the next one starts the log over.
RESTART_LOG_PAGES = 8000
CHECKPOINT_TIMEOUT = 60.0
# Rows per INSERT of events: 5 values each, under SQLite's oldest limit of 999 per statement.
EVENTS_PER_INSERT = 100
IDS_PER_QUERY = 500  # ids bound in one IN (...), under SQLite's oldest limit of 999 parameters

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    settings TEXT NOT NULL DEFAULT '{}',
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL REFERENCES sites(id),
    session_id TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'ai',
    email TEXT, phone TEXT, contact_name TEXT,
    rating INTEGER, rating_comment TEXT,
    handoff INTEGER NOT NULL DEFAULT 0,
    lang TEXT, page_url TEXT, page_title TEXT, ip TEXT,
    user_agent TEXT,
    assignee_id INTEGER,
    closed INTEGER NOT NULL DEFAULT 0,
    read_through INTEGER NOT NULL DEFAULT 0,
    last_seen_at REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    first_visitor_at TEXT, first_ai_at TEXT, first_operator_at TEXT, handoff_at TEXT,
    first_reply_wait REAL,
    handoff_reason TEXT,
    UNIQUE (site_id, session_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    message_id TEXT,
    reply_to TEXT,
    image_key TEXT,
    operator_name TEXT,
    sources TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'complete',
    created_at TEXT NOT NULL,
    usage TEXT,
    relevance REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_visitor_id
    ON messages (conversation_id, message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_reply ON messages (conversation_id, reply_to)
    WHERE reply_to IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation_id, id);
CREATE INDEX IF NOT EXISTS messages_role_time ON messages (role, created_at);
-- The per-session AI-cap count: without it SQLite walks every AI reply of the last hour.
CREATE INDEX IF NOT EXISTS messages_conversation_role_time ON messages (conversation_id, role, created_at);
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at REAL,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_lookup ON blocks (site_id, kind, value);
CREATE TABLE IF NOT EXISTS proactive_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    content TEXT NOT NULL,
    sender TEXT NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    rule_key TEXT,
    deliver_at REAL NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS proactive_pending ON proactive_messages (site_id, session_id, acked, id);
CREATE UNIQUE INDEX IF NOT EXISTS proactive_rule_once
    ON proactive_messages (site_id, session_id, rule_key) WHERE rule_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    url TEXT,
    content TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    file_name TEXT
);
CREATE INDEX IF NOT EXISTS documents_site ON documents (site_id);
CREATE TABLE IF NOT EXISTS knowledge_versions (
    site_id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fetch_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    added INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fetch_jobs_site ON fetch_jobs (site_id, id);
CREATE TABLE IF NOT EXISTS answer_claims (
    conversation_id INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    followed_at REAL,
    PRIMARY KEY (conversation_id, message_id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic ON events (topic, id);
CREATE INDEX IF NOT EXISTS conversations_activity ON conversations (site_id, updated_at);
CREATE INDEX IF NOT EXISTS conversations_started ON conversations (site_id, first_visitor_at);
CREATE INDEX IF NOT EXISTS conversations_handoff ON conversations (site_id, handoff_at);
CREATE TABLE IF NOT EXISTS operators (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    totp_secret TEXT,
    recovery_codes TEXT NOT NULL DEFAULT '[]',
    prefs TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operator_sites (
    operator_id INTEGER NOT NULL,
    site_id INTEGER NOT NULL,
    PRIMARY KEY (operator_id, site_id)
);
CREATE TABLE IF NOT EXISTS operator_sessions (
    token_hash TEXT PRIMARY KEY,
    operator_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    ip TEXT,
    user_agent TEXT,
    second_factor_done INTEGER NOT NULL DEFAULT 1,
    present_at REAL
);
CREATE INDEX IF NOT EXISTS operator_sessions_operator ON operator_sessions (operator_id);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at);
CREATE TABLE IF NOT EXISTS setup_tokens (
    token_hash TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    operator_id INTEGER,
    operator_email TEXT,
    action TEXT NOT NULL,
    site_id INTEGER,
    target TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    ip TEXT
);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL,
    operator_id INTEGER,
    author TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_conversation ON notes (conversation_id, id);
CREATE TABLE IF NOT EXISTS canned_replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL,
    shortcut TEXT NOT NULL,
    content TEXT NOT NULL,
    UNIQUE (site_id, shortcut)
);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
"""



def _site(row: sqlite3.Row) -> Site:
    return Site(
        id=row["id"],
        site_key=row["site_key"],
        name=row["name"],
        allowed_origins=json.loads(row["allowed_origins"]),
        settings=json.loads(row["settings"]),
        enabled=bool(row["enabled"]),
        created_at=row["created_at"],
    )


def _conversation(row: sqlite3.Row) -> Conversation:
    data = dict(row)
    data["handoff"] = bool(data["handoff"])
    data["closed"] = bool(data["closed"])
    return Conversation(**data)


def _message(row: sqlite3.Row) -> Message:
    data = dict(row)
    data["sources"] = [Source(**s) for s in json.loads(data["sources"])]
    data["usage"] = json.loads(data["usage"]) if data.get("usage") else None
    return Message(**data)


def _proactive(row: sqlite3.Row) -> ProactiveMessage:
    data = dict(row)
    for internal in ("acked", "rule_key", "deliver_at"):
        del data[internal]
    return ProactiveMessage(**data)


def _event(row: sqlite3.Row) -> Event:
    return Event(id=row["id"], topic=row["topic"], kind=row["kind"], payload=json.loads(row["payload"]),
                 origin=row["origin"])


def _document(row: sqlite3.Row) -> KnowledgeDocument:
    return KnowledgeDocument(**dict(row))


def _fetch_job(row: sqlite3.Row) -> FetchJob:
    data = dict(row)
    data["errors"] = json.loads(data["errors"])
    return FetchJob(**data)


@dataclasses.dataclass(frozen=True, slots=True)
class _OperatorMessage:
    """An operator's message waiting for the writer (SQLiteStore.add_operator_message's arguments)."""

    site_id: int
    session_id: str
    content: str
    operator_name: str
    events: Callable[[Message], Events]
    origin: str
    following: Callable[[int, str], None] | None


def _count_messages_query(site_id: int, since: str, role: str | None, session_id: str | None
                          ) -> tuple[str, list[Any]]:
    sql = ("SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id"
           " WHERE c.site_id = ? AND m.created_at >= ?")
    params: list[Any] = [site_id, since]
    if role is not None:
        sql += " AND m.role = ?"
        params.append(role)
    if session_id is not None:
        sql += " AND c.session_id = ?"
        params.append(session_id)
    return sql, params


KNOWLEDGE_VERSION_SQL = "SELECT version FROM knowledge_versions WHERE site_id = ?"


def _knowledge_version(row: sqlite3.Row | None) -> str:
    return str(row[0] if row else 0)


def _operator_conversations(db: sqlite3.Connection, sessions: list[tuple[int, str]]
                            ) -> dict[tuple[int, str], list[Any]]:
    """The sessions' conversations that exist, as [id, mode, id of its latest operator message]."""
    # As one row of JSON: each row read is one more turn at the GIL for the writer thread.
    (found,) = db.execute(
        f"WITH wanted(site_id, session_id) AS (VALUES {', '.join(['(?, ?)'] * len(sessions))})"
        " SELECT json_group_array(json_array(c.site_id, c.session_id, c.id, c.mode,"
        " (SELECT m.id FROM messages m WHERE m.conversation_id = c.id AND m.role = 'operator'"
        " ORDER BY m.id DESC LIMIT 1)))"
        " FROM wanted w CROSS JOIN conversations c"  # CROSS: w first, then c by its unique index
        " ON c.site_id = w.site_id AND c.session_id = w.session_id",
        [value for session in sessions for value in session]).fetchone()
    return {(site_id, session_id): [conversation_id, mode, previous]
            for site_id, session_id, conversation_id, mode, previous in json.loads(found)}


def _touch_conversations(db: sqlite3.Connection, role: str, now: str,
                         conversation_ids: list[int]) -> None:
    """The conversations' times after a message from `role` written at `now`."""
    first = FIRST_MESSAGE_FIELD.get(role)
    marks = ", ".join("?" * len(conversation_ids))
    if first is None:
        db.execute(f"UPDATE conversations SET updated_at = ? WHERE id IN ({marks})",
                   (now, *conversation_ids))
        return
    # A person's message answers the handoff: the conversation no longer needs one (handoff_at
    # stays, for the numbers).
    wait = (", first_reply_wait = CASE WHEN first_reply_wait IS NULL AND handoff_at IS NOT NULL"
            " THEN ROUND((julianday(?) - julianday(handoff_at)) * 86400) ELSE first_reply_wait END,"
            " handoff = 0, handoff_reason = NULL"
            if role == "operator" else "")
    db.execute(f"UPDATE conversations SET updated_at = ?, {first} = COALESCE({first}, ?){wait}"
               f" WHERE id IN ({marks})", (now, now, *((now,) if wait else ()), *conversation_ids))


class _Refused(Exception):
    """Ends a transaction that must write nothing (a blocked visitor's question)."""


class _Connection(sqlite3.Connection):
    wrote_events = False  # in the open transaction: ring the other processes once it commits


class SQLiteStore(Store):
    # Ids come from AUTOINCREMENT inside write transactions, which the database lock serialises.
    event_ids_commit_in_order = True

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000, readers: int = READERS,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._reader_count = readers
        self._checkpoint_interval = checkpoint_interval
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_thread: StoreThreads | None = None
        self._checkpoint_db: sqlite3.Connection | None = None
        self._commits = 0  # write transactions so far, counted on the writer thread
        # (frames in the log, frames copied) at the last background checkpoint: how far it got
        self.last_checkpoint: tuple[int, int] | None = None
        self._executor: StoreThreads | None = None
        self._groups: GroupCommit | None = None
        self._db: sqlite3.Connection | None = None
        self._readers: StoreThreads | None = None
        self._reader_local = threading.local()
        self._reader_dbs: list[sqlite3.Connection] = []
        self._reader_dbs_lock = threading.Lock()
        self._doorbell = Doorbell(path.with_name(path.name + "-doorbells"))

    # -- plumbing -----------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = StoreThreads("sqlite-write", 1)
        await self._run(self._connect)
        self._groups = GroupCommit(self._executor, self._tx, self._tx_here)
        self._readers = StoreThreads("sqlite-read", self._reader_count)
        self._checkpoint_thread = StoreThreads("sqlite-checkpoint", 1)
        self._checkpointer = asyncio.create_task(self._checkpoint_in_background())

    def _open_connection(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             cached_statements=CACHED_STATEMENTS, factory=_Connection)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return db

    def _reader(self) -> sqlite3.Connection:
        """This reader thread's own connection, opened on first use."""
        db: sqlite3.Connection | None = getattr(self._reader_local, "db", None)
        if db is None:
            db = self._open_connection()
            db.execute("PRAGMA query_only = ON")
            self._reader_local.db = db
            with self._reader_dbs_lock:
                self._reader_dbs.append(db)
        return db

    def _connect(self) -> None:
        db = self._open_connection()
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # see RESTART_LOG_PAGES
        db.execute("PRAGMA foreign_keys = ON")
        # Deleted rows are overwritten with zeros, not left in free pages: an erased visitor's words
        # must not be readable in the file afterwards.
        db.execute("PRAGMA secure_delete = ON")
        self._add_missing_columns(db)
        had_search = db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone() is not None
        db.executescript(SCHEMA)
        if not had_search:  # a data directory from before search: index what it already holds
            db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
        self._db = db

    # Columns added after the first release: (table, column, declaration). SCHEMA creates them in a
    # new file; an older file gets them here, before SCHEMA's indexes may refer to them.
    ADDED_COLUMNS = (
        ("conversations", "user_agent", "TEXT"),
        ("conversations", "assignee_id", "INTEGER"),
        ("conversations", "closed", "INTEGER NOT NULL DEFAULT 0"),
        ("conversations", "read_through", "INTEGER NOT NULL DEFAULT 0"),
        ("conversations", "last_seen_at", "REAL"),
        ("messages", "usage", "TEXT"),
        ("messages", "relevance", "REAL"),
        ("proactive_messages", "rule_key", "TEXT"),
        ("proactive_messages", "deliver_at", "REAL NOT NULL DEFAULT 0"),
        ("conversations", "first_visitor_at", "TEXT"),
        ("conversations", "first_ai_at", "TEXT"),
        ("conversations", "first_operator_at", "TEXT"),
        ("conversations", "handoff_at", "TEXT"),
        ("conversations", "first_reply_wait", "REAL"),
        ("operator_sessions", "present_at", "REAL"),
        # Handed over before reasons were kept: no reason (the dashboard says only "needs a person").
        ("conversations", "handoff_reason", "TEXT"),
        ("answer_claims", "followed_at", "REAL"),
        ("documents", "file_name", "TEXT"),
    )

    @classmethod
    def _add_missing_columns(cls, db: sqlite3.Connection) -> None:
        added = set()
        for table, column, declaration in cls.ADDED_COLUMNS:
            existing = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if existing and column not in existing:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                added.add(column)
        if "first_visitor_at" in added:  # conversations from before the numbers: fill in what is known
            for role, column in FIRST_MESSAGE_FIELD.items():
                db.execute(f"UPDATE conversations SET {column} = (SELECT MIN(created_at) FROM messages"
                           f" WHERE conversation_id = conversations.id AND role = ?)", (role,))
            db.execute("UPDATE conversations SET handoff_at = updated_at WHERE handoff = 1")

    async def _checkpoint_in_background(self) -> None:
        """Every CHECKPOINT_INTERVAL while anything was written, until the store closes; a failure
        is logged and tried again next time."""
        checkpointed_at = 0
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            commits = self._commits
            if commits == checkpointed_at:
                continue
            try:
                # asyncio.timeout, not wait_for: closing cancels this task, and 3.11's wait_for
                # returns the result instead when the call ends at that moment, so it ran on.
                async with asyncio.timeout(CHECKPOINT_TIMEOUT):
                    self.last_checkpoint = await self._on(self._checkpoint_thread, self._checkpoint_passive)
                    log_frames, copied = self.last_checkpoint
                    if log_frames >= RESTART_LOG_PAGES and copied == log_frames:
                        self.last_checkpoint = await self._run(self._checkpoint_on_writer)
                checkpointed_at = commits
            except (sqlite3.Error, StoreUnavailable, TimeoutError) as exc:
                log.warning("background checkpoint of %s failed: %s", self.path, exc)

    def _checkpoint_passive(self) -> tuple[int, int]:
        """On the checkpoint thread: (frames in the log, frames copied into the database)."""
        if self._checkpoint_db is None:
            self._checkpoint_db = self._open_connection()
        return self._passive_checkpoint(self._checkpoint_db)

    def _checkpoint_on_writer(self) -> tuple[int, int]:
        """On the writer thread, so that no write comes between this checkpoint and the next
        write, which then starts the log over (RESTART_LOG_PAGES)."""
        assert self._db is not None
        return self._passive_checkpoint(self._db)

    @staticmethod
    def _passive_checkpoint(db: sqlite3.Connection) -> tuple[int, int]:
        # fetchall: a statement left unfinished would hold a read of the log, which would then
        # never start over from its beginning
        [(_, log_frames, copied)] = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return log_frames, copied

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            checkpointer.cancel()
            await asyncio.gather(checkpointer, return_exceptions=True)
        if self._checkpoint_thread is not None:
            thread, self._checkpoint_thread = self._checkpoint_thread, None
            await asyncio.to_thread(thread.shutdown)  # a checkpoint under way finishes first
            if self._checkpoint_db is not None:
                self._checkpoint_db.close()
                self._checkpoint_db = None
        if self._readers is not None:
            readers, self._readers = self._readers, None
            await asyncio.to_thread(readers.shutdown)
            with self._reader_dbs_lock:
                for reader in self._reader_dbs:
                    reader.close()
                self._reader_dbs.clear()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown()
        self._executor = None
        self._groups = None
        self._doorbell.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the writer thread (with the writing connection in self._db)."""
        return await self._on(self._executor, fn, *args)

    async def _on(self, threads: StoreThreads | None, fn: Callable[..., T], *args: Any) -> T:
        if threads is None:
            raise StoreUnavailable("The store is not open.")
        return await self._outcome(threads.submit(fn, *args))

    @property
    def _group_commit(self) -> GroupCommit:
        if self._groups is None:
            raise StoreUnavailable("The store is not open.")
        return self._groups

    async def _grouped(self, fn: Callable[[sqlite3.Connection], T], *, here: bool = False) -> T:
        """`fn` in a write transaction, shared with the writes queued with it (group commit: see
        server/store/groups.py). `fn` may run more than once, so it changes nothing but `db`.
        `here`: a few rows, which may be written on the event loop."""
        return await self._outcome(self._group_commit.submit(fn, here=here))

    async def _batched(self, write_many: Callable[[sqlite3.Connection, list[W]], list[T]], item: W, *,
                       here: bool = False) -> T:
        """`item`, written by `write_many` with the items queued next to it (see `_grouped`)."""
        return await self._outcome(self._group_commit.submit_batched(write_many, item, here=here))

    @staticmethod
    async def _outcome(call: Awaitable[T]) -> T:
        """A store thread's result, with SQLite's errors as the store's."""
        try:
            return await call
        except sqlite3.IntegrityError:
            raise
        except sqlite3.ProgrammingError as exc:
            if "binding parameter" in str(exc):  # a dict or list where a plain value belongs
                raise TypeError(str(exc)) from None
            raise
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            log.error("sqlite error: %s", exc)
            raise StoreUnavailable("The database is unavailable; please try again.") from exc

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one immediate transaction (taking the write lock up front avoids deadlocks)."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        return self._finish_tx(db, fn)

    def _tx_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """As _tx, on the event loop (small writes while the writer thread is idle), where the
        write lock is not waited for: when another process holds it, WriterBusy, and the writer
        thread waits for it instead."""
        db = self._db
        if db is None:
            raise StoreUnavailable("The store is not open.")
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise WriterBusy from exc
            raise
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return self._finish_tx(db, fn)

    def _finish_tx(self, db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` in the transaction just begun, then its commit (or rollback)."""
        try:
            result = fn(db)
        except BaseException:
            db.wrote_events = False
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._commits += 1
        if db.wrote_events:
            db.wrote_events = False
            self._doorbell.ring()
        return result

    def _select(self, sql: str, params: tuple[Any, ...], many: bool) -> Any:
        cursor = self._reader().execute(sql, params)
        try:
            return cursor.fetchall() if many else cursor.fetchone()
        finally:
            # Ends the statement, hence the read transaction: the next read sees the latest writes.
            cursor.close()

    async def _read_one(self, sql: str, *params: Any) -> sqlite3.Row | None:
        """One row, read on a reader thread."""
        return await self._on(self._readers, self._select, sql, params, False)

    async def _read_all(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        """Every row, read on a reader thread."""
        return await self._on(self._readers, self._select, sql, params, True)

    # On the writer's connection, for `self._run(self._one, ...)`: a read that must see the
    # writer's own state. Plain reads use _read_one / _read_all.
    def _one(self, sql: str, *params: Any) -> sqlite3.Row | None:
        assert self._db is not None
        return self._db.execute(sql, params).fetchone()

    def _all(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        assert self._db is not None
        return self._db.execute(sql, params).fetchall()

    async def ping(self) -> None:
        # Both sides: the writer can take the write lock, and a reader can open the file. Another
        # process holding the lock (a `BEGIN EXCLUSIVE` left open in a shell) fails every write
        # while reads go on.
        await self._run(self._can_write)
        await self._read_one("SELECT 1")

    def _can_write(self) -> None:
        db = self._db
        assert db is not None
        # A short wait for the lock: the probe holds up the one writer thread while it waits, and
        # a lock held this long is already a problem a load balancer should hear of.
        db.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_TIMEOUT_MS}")
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

    # -- sites --------------------------------------------------------------------------------
    async def create_site(
        self, site_key: str, name: str, allowed_origins: list[str], settings: dict[str, Any]
    ) -> Site:
        def insert(db: sqlite3.Connection) -> sqlite3.Row:
            cur = db.execute(
                "INSERT INTO sites (site_key, name, allowed_origins, settings, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (site_key, name, json.dumps(allowed_origins), json.dumps(settings), utc_now_iso()),
            )
            return db.execute("SELECT * FROM sites WHERE id = ?", (cur.lastrowid,)).fetchone()

        return _site(await self._run(self._tx, insert))

    async def get_site_by_key(self, site_key: str) -> Site | None:
        row = await self._read_one("SELECT * FROM sites WHERE site_key = ?", site_key)
        return _site(row) if row else None

    async def list_sites(self, limit: int = 1000) -> list[Site]:
        rows = await self._read_all("SELECT * FROM sites ORDER BY id LIMIT ?", limit)
        return [_site(r) for r in rows]

    async def update_site_settings(self, site_id: int, changes: dict[str, Any]) -> Site:
        def update(db: sqlite3.Connection) -> sqlite3.Row:
            # Read and write in one immediate transaction: a concurrent change of another key,
            # from another process, is kept rather than overwritten.
            row = db.execute("SELECT settings FROM sites WHERE id = ?", (site_id,)).fetchone()
            merged = {**json.loads(row["settings"]), **changes} if row else changes
            db.execute("UPDATE sites SET settings = ? WHERE id = ?", (json.dumps(merged), site_id))
            return db.execute("SELECT * FROM sites WHERE id = ?", (site_id,)).fetchone()

        return _site(await self._run(self._tx, update))

    async def update_site(self, site_id: int, *, name: str | None = None,
                          allowed_origins: list[str] | None = None, site_key: str | None = None) -> Site:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = str(name)
        if allowed_origins is not None:
            changes["allowed_origins"] = json.dumps([str(o) for o in allowed_origins])
        if site_key is not None:
            changes["site_key"] = str(site_key)

        def update(db: sqlite3.Connection) -> sqlite3.Row:
            if changes:
                db.execute(f"UPDATE sites SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                           (*changes.values(), site_id))
            return db.execute("SELECT * FROM sites WHERE id = ?", (site_id,)).fetchone()

        return _site(await self._run(self._tx, update))

    # -- conversations ------------------------------------------------------------------------
    async def get_conversation(self, site_id: int, session_id: str) -> Conversation | None:
        row = await self._read_one(
            "SELECT * FROM conversations WHERE site_id = ? AND session_id = ?",
            site_id,
            session_id,
        )
        return _conversation(row) if row else None

    async def ensure_conversation(
        self, site_id: int, session_id: str, context: dict[str, Any]
    ) -> Conversation:
        fields = {k: v for k, v in context.items() if k in ("lang", "page_url", "page_title", "ip")}
        return _conversation(await self._run(self._tx, lambda db: self._conversation_row(
            db, site_id, session_id, fields)))

    @staticmethod
    def _conversation_row(db: sqlite3.Connection, site_id: int, session_id: str,
                          fields: dict[str, Any]) -> sqlite3.Row:
        """The session's conversation, made with `fields` if missing. In a write transaction, which
        holds the database's write lock from its start: no one can make it in between."""
        select = "SELECT * FROM conversations WHERE site_id = ? AND session_id = ?"
        row = db.execute(select, (site_id, session_id)).fetchone()
        if row is None:  # looked up first: the common case is one statement, not an insert and a read
            now = utc_now_iso()
            columns = ["site_id", "session_id", "created_at", "updated_at", *fields]
            db.execute(f"INSERT INTO conversations ({', '.join(columns)})"
                       f" VALUES ({', '.join('?' * len(columns))})",
                       (site_id, session_id, now, now, *fields.values()))
            row = db.execute(select, (site_id, session_id)).fetchone()
        return row

    async def update_conversation(self, conversation_id: int, changes: dict[str, Any]) -> None:
        if changes:
            await self._run(self._tx, self._conversation_update(conversation_id, changes))

    async def write_presence(self, changes: dict[int, dict[str, Any]], *, events: Events,
                             origin: str) -> None:
        # One statement per set of columns, run for every row in C (executemany): a batch of a
        # thousand visitors must not hold the GIL for a thousand statements' worth of Python.
        rows_by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for conversation_id, change in changes.items():
            check_presence(change)
            if change:
                rows_by_columns.setdefault(tuple(change), []).append((*change.values(), conversation_id))
        statements = [(f"UPDATE conversations SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                       rows) for columns, rows in rows_by_columns.items()]

        def write(db: sqlite3.Connection) -> None:
            for sql, rows in statements:
                db.executemany(sql, rows)
            if events:
                self._insert_events(db, events, origin, time.time())

        await self._grouped(write)

    @staticmethod
    def _conversation_update(conversation_id: int, changes: dict[str, Any]
                             ) -> Callable[[sqlite3.Connection], None]:
        """The statement applying `changes` (checked here, on the caller's thread) to a conversation."""
        unknown = set(changes) - CONVERSATION_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        changes = check_handoff(changes)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values: list[Any] = list(changes.values())
        if set(changes) - QUIET_CONVERSATION_FIELDS:
            assignments += ", updated_at = ?"
            values.append(utc_now_iso())
        if changes.get("handoff") is True:  # the first handoff is kept for the numbers
            assignments += ", handoff_at = COALESCE(handoff_at, ?)"
            values.append(utc_now_iso())

        def update(db: sqlite3.Connection) -> None:
            db.execute(f"UPDATE conversations SET {assignments} WHERE id = ?",
                       (*values, conversation_id))

        return update

    # -- messages -----------------------------------------------------------------------------
    async def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        message_id: str | None = None,
        reply_to: str | None = None,
        image_key: str | None = None,
        operator_name: str | None = None,
        sources: Iterable[Source] = (),
        status: str = "complete",
        usage: dict[str, Any] | None = None,
        relevance: float | None = None,
    ) -> Message:
        insert = self._message_insert(role, content, message_id=message_id, reply_to=reply_to,
                                      image_key=image_key, operator_name=operator_name,
                                      sources=sources, status=status, usage=usage,
                                      relevance=relevance)
        try:
            return await self._run(self._tx, lambda db: insert(db, conversation_id))
        except sqlite3.IntegrityError as exc:
            raise DuplicateMessageId(message_id) from exc

    @staticmethod
    def _message_insert(role: str, content: str, *, message_id: str | None,
                        reply_to: str | None = None, image_key: str | None = None,
                        operator_name: str | None = None, sources: Iterable[Source] = (),
                        status: str = "complete", usage: dict[str, Any] | None = None,
                        relevance: float | None = None
                        ) -> Callable[[sqlite3.Connection, int], Message]:
        """The statements adding a message to a conversation (JSON encoded here, on the caller's
        thread). The message is made from what was inserted, not read back: every statement is a
        turn at the GIL for the writer thread, which waits for it while the event loop is busy."""
        sources = list(sources)
        sources_json = json.dumps([s.as_dict() for s in sources])
        usage_json = json.dumps(usage) if usage is not None else None

        def insert(db: sqlite3.Connection, conversation_id: int) -> Message:
            now = utc_now_iso()
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, message_id, reply_to,"
                " image_key, operator_name, sources, status, created_at, usage, relevance)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, message_id, reply_to, image_key, operator_name,
                 sources_json, status, now, usage_json, relevance),
            )
            _touch_conversations(db, role, now, [conversation_id])
            return Message(id=int(cur.lastrowid or 0), conversation_id=conversation_id, role=role,  # type: ignore[arg-type]
                           content=content, created_at=now, message_id=message_id, reply_to=reply_to,
                           image_key=image_key, operator_name=operator_name, sources=list(sources),
                           status=status,  # type: ignore[arg-type]
                           usage=json.loads(usage_json) if usage_json is not None else None,
                           relevance=None if relevance is None else float(relevance))

        return insert

    async def add_question(
        self, conversation_id: int, content: str, *, message_id: str,
        events: Callable[[Message], Events], origin: str,
        claim: bool, now: float, stale_after: float,
    ) -> tuple[Message, bool]:
        insert_message = self._message_insert("visitor", content, message_id=message_id)

        def insert(db: sqlite3.Connection) -> tuple[Message, bool]:
            message = insert_message(db, conversation_id)
            self._insert_events(db, events(message), origin, time.time())
            return message, claim and self._claim(db, conversation_id, message_id, origin, now, stale_after)

        try:
            return await self._run(self._tx, insert)
        except sqlite3.IntegrityError as exc:
            raise DuplicateMessageId(message_id) from exc

    async def take_question(
        self, site_id: int, session_id: str, content: str, *, message_id: str,
        context: dict[str, Any], changes: Callable[[Conversation], dict[str, Any]], ip: str | None,
        events: Callable[[Conversation, Message], Events], origin: str, now: float,
        stale_after: float, history: int, replies_since: str | None = None,
    ) -> TakenQuestion:
        fields = {k: v for k, v in context.items() if k in ("lang", "page_url", "page_title", "ip")}
        replies_query = (_count_messages_query(site_id, replies_since, "ai", session_id)
                         if replies_since is not None else None)
        insert_message = self._message_insert("visitor", content, message_id=message_id)

        def take(db: sqlite3.Connection) -> TakenQuestion:
            conversation = _conversation(self._conversation_row(db, site_id, session_id, fields))
            sql, *params = self._block_query(site_id, session_id, ip, conversation.email, now)
            if db.execute(sql, params).fetchone() is not None:
                raise _Refused  # rolls back the conversation made above, if it is new
            updates = changes(conversation)
            if updates:
                self._conversation_update(conversation.id, updates)(db)
            changed = dataclasses.replace(conversation, **updates)
            earlier = [_message(r) for r in reversed(db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
                (conversation.id, history)).fetchall())] if history > 0 else []
            try:
                message = insert_message(db, conversation.id)
            except sqlite3.IntegrityError:  # the message_id was used before: only the changes stand
                return TakenQuestion(changed, None)
            self._insert_events(db, events(conversation, message), origin, time.time())
            claimed = conversation.mode != "operator" and self._claim(
                db, conversation.id, message_id, origin, now, stale_after)
            replies = int(db.execute(*replies_query).fetchone()[0]) if replies_query else None
            version = _knowledge_version(db.execute(KNOWLEDGE_VERSION_SQL, (site_id,)).fetchone())
            return TakenQuestion(changed, message, claimed=claimed, history=earlier, ai_replies=replies,
                                 knowledge_version=version)

        # Questions come in bursts too (many visitors at once): the ones queued behind each other
        # share a transaction. A blocked visitor's is rolled back alone (group commit's rule).
        try:
            return await self._grouped(take, here=True)
        except _Refused:
            return TakenQuestion(None, None, blocked=True)

    async def add_operator_message(
        self, site_id: int, session_id: str, content: str, *, operator_name: str,
        events: Callable[[Message], Events], origin: str,
        following: Callable[[int, str], None] | None = None,
    ) -> Message:
        # Operators' messages come in bursts (one operator to many visitors, many operators): the
        # ones queued behind each other share a transaction and its statements.
        return await self._batched(self._insert_operator_messages, _OperatorMessage(
            site_id, session_id, content, operator_name, events, origin, following), here=True)

    @staticmethod
    def _insert_operator_messages(db: sqlite3.Connection, writes: list[_OperatorMessage]
                                  ) -> list[Message]:
        """On the writer, in a write transaction: four statements for any number of messages
        (their conversations with each one's latest operator message, the messages, the
        conversations' times, the events). Under the write lock, so every smaller message id is
        committed, and the messages' ids come one apart."""
        sessions = list(dict.fromkeys((w.site_id, w.session_id) for w in writes))
        found = _operator_conversations(db, sessions)
        for site_id, session_id in sessions:
            if (site_id, session_id) not in found:
                made = SQLiteStore._conversation_row(db, site_id, session_id, {})
                found[site_id, session_id] = [made["id"], made["mode"], None]
        conversations = [found[w.site_id, w.session_id] for w in writes]
        now = utc_now_iso()
        last = int(db.execute(
            "INSERT INTO messages (conversation_id, role, content, operator_name, created_at) VALUES "
            + ", ".join(["(?, 'operator', ?, ?, ?)"] * len(writes)),
            [value for w, (conversation_id, _, _) in zip(writes, conversations)
             for value in (conversation_id, w.content, w.operator_name, now)]).lastrowid or 0)
        _touch_conversations(db, "operator", now, [found[session][0] for session in sessions])
        messages = []
        for message_id, w, conversation in zip(range(last - len(writes) + 1, last + 1), writes,
                                                conversations):
            messages.append(Message(id=message_id, conversation_id=conversation[0], role="operator",
                                    content=w.content, created_at=now, operator_name=w.operator_name))
            if w.following is not None:
                w.following(conversation[2] or 0, conversation[1])
            conversation[2] = message_id  # the previous one of the next message here
        written = time.time()
        for origin, same_origin in itertools.groupby(zip(writes, messages), lambda pair: pair[0].origin):
            SQLiteStore._insert_events(db, [event for w, message in same_origin
                                            for event in w.events(message)], origin, written)
        return messages

    async def get_visitor_message(self, conversation_id: int, message_id: str) -> Message | None:
        row = await self._read_one(
            "SELECT * FROM messages WHERE conversation_id = ? AND message_id = ?",
            conversation_id,
            message_id,
        )
        return _message(row) if row else None

    async def get_reply(self, conversation_id: int, message_id: str) -> Message | None:
        row = await self._read_one(
            "SELECT * FROM messages WHERE conversation_id = ? AND reply_to = ? ORDER BY id DESC LIMIT 1",
            conversation_id,
            message_id,
        )
        return _message(row) if row else None

    async def list_messages(
        self,
        conversation_id: int,
        *,
        after: int | None = None,
        limit: int = 50,
        roles: tuple[str, ...] | None = None,
    ) -> list[Message]:
        sql, params = self._messages_query(after, limit, roles)
        return [_message(r) for r in await self._read_all(sql, conversation_id, *params)]

    async def first_visitor_messages(self, conversation_ids: list[int]) -> dict[int, str]:
        firsts: dict[int, str] = {}
        for start in range(0, len(conversation_ids), IDS_PER_QUERY):
            some = conversation_ids[start:start + IDS_PER_QUERY]
            rows = await self._read_all(
                "SELECT conversation_id, content FROM messages WHERE id IN (SELECT min(id) FROM messages"
                f" WHERE conversation_id IN ({', '.join('?' * len(some))}) AND role = 'visitor'"
                " GROUP BY conversation_id)", *some)
            firsts.update((r[0], r[1]) for r in rows)
        return firsts

    @staticmethod
    def _messages_query(after: int | None, limit: int, roles: tuple[str, ...] | None
                        ) -> tuple[str, tuple[Any, ...]]:
        """list_messages' query; its first parameter, the conversation id, is left to the caller."""
        sql = "SELECT * FROM messages WHERE conversation_id = ? AND id > ?"
        params: list[Any] = [after or 0]
        if roles:
            sql += f" AND role IN ({', '.join('?' * len(roles))})"
            params.extend(roles)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return sql, tuple(params)

    async def conversation_messages(
        self, site_id: int, session_id: str, *, after: int | None = None, limit: int = 50,
        roles: tuple[str, ...] | None = None,
    ) -> tuple[Conversation | None, list[Message]]:
        sql, params = self._messages_query(after, limit, roles)

        def read() -> tuple[Conversation | None, list[Message]]:
            row = self._select("SELECT * FROM conversations WHERE site_id = ? AND session_id = ?",
                               (site_id, session_id), False)
            if row is None:
                return None, []
            return _conversation(row), [_message(r) for r in self._select(sql, (row["id"], *params), True)]

        return await self._on(self._readers, read)

    async def count_messages(
        self, site_id: int, *, since: str, role: str | None = None, session_id: str | None = None
    ) -> int:
        sql, params = _count_messages_query(site_id, since, role, session_id)
        row = await self._read_one(sql, *params)
        return int(row[0]) if row else 0

    async def recent_messages(self, conversation_id: int, limit: int) -> list[Message]:
        rows = await self._read_all(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
            conversation_id,
            limit,
        )
        return [_message(r) for r in reversed(rows)]

    async def knowledge_gaps(self, site_id: int, *, below: float, limit: int = 50) -> list[KnowledgeGap]:
        rows = await self._read_all(
            "SELECT question.content AS question, answer.relevance AS relevance,"
            " c.session_id AS session_id, question.created_at AS asked_at"
            " FROM messages AS answer"
            " JOIN conversations AS c ON c.id = answer.conversation_id"
            " JOIN messages AS question ON question.conversation_id = answer.conversation_id"
            "  AND question.message_id = answer.reply_to"
            " WHERE c.site_id = ? AND answer.role = 'ai' AND answer.relevance < ?"
            " ORDER BY answer.id DESC LIMIT ?",
            site_id, below, limit,
        )
        return [KnowledgeGap(**dict(r)) for r in rows]

    async def handoff_questions(self, site_id: int, *, limit: int = 50) -> list[KnowledgeGap]:
        rows = await self._read_all(
            "SELECT question.content AS question, c.session_id AS session_id,"
            " question.created_at AS asked_at,"
            " (SELECT MAX(answer.relevance) FROM messages AS answer WHERE answer.conversation_id = c.id"
            "  AND answer.reply_to = question.message_id AND answer.role = 'ai') AS relevance"
            " FROM conversations AS c JOIN messages AS question ON question.id = ("
            "  SELECT MAX(id) FROM messages WHERE conversation_id = c.id AND role = 'visitor'"
            "  AND created_at <= c.handoff_at)"
            " WHERE c.site_id = ? AND c.handoff_at IS NOT NULL ORDER BY c.handoff_at DESC LIMIT ?",
            site_id, limit,
        )
        return [KnowledgeGap(**dict(r), handoff=True) for r in rows]

    async def site_activity(self, site_id: int, *, since: str, until: str) -> SiteActivity:
        started = " FROM conversations WHERE site_id = ? AND first_visitor_at >= ? AND first_visitor_at < ?"
        window = (site_id, since, until)
        counts = await self._read_one(
            "SELECT COUNT(*) AS conversations,"
            " COALESCE(SUM(first_ai_at IS NOT NULL AND handoff_at IS NULL AND first_operator_at IS NULL), 0)"
            "  AS ai_only,"
            " COALESCE(SUM(handoff_at IS NOT NULL), 0) AS handoffs,"
            " COALESCE(SUM(first_reply_wait IS NOT NULL), 0) AS answered" + started, *window)
        assert counts is not None
        ratings = await self._read_all(
            "SELECT rating, COUNT(*) AS n" + started + " AND rating BETWEEN 1 AND 5 GROUP BY rating", *window)
        median = None
        answered = counts["answered"]
        if answered:  # the middle one or two waits, found by the database
            middle = await self._read_all(
                "SELECT first_reply_wait" + started + " AND first_reply_wait IS NOT NULL"
                " ORDER BY first_reply_wait LIMIT ? OFFSET ?", *window, 2 - answered % 2, (answered - 1) // 2)
            median = sum(r[0] for r in middle) / len(middle) if middle else None
        hours = await self._read_all(
            "SELECT substr(m.created_at, 1, 13) AS hour, COUNT(*) AS n FROM messages AS m"
            " JOIN conversations AS c ON c.id = m.conversation_id"
            " WHERE m.role = 'visitor' AND m.created_at >= ? AND m.created_at < ? AND c.site_id = ?"
            " GROUP BY hour", since, until, site_id)
        by_hour = {r["hour"]: r["n"] for r in hours}
        return SiteActivity(
            conversations=counts["conversations"], ai_only=counts["ai_only"], handoffs=counts["handoffs"],
            answered_handoffs=answered, median_first_reply=median,
            ratings={r["rating"]: r["n"] for r in ratings}, visitor_messages=sum(by_hour.values()),
            messages_by_hour=by_hour)

    # -- privacy ------------------------------------------------------------------------------
    async def erase_conversation(self, site_id: int, session_id: str, *, compact: bool = True) -> list[str]:
        def erase(db: sqlite3.Connection) -> list[str]:
            row = db.execute("SELECT id FROM conversations WHERE site_id = ? AND session_id = ?",
                             (site_id, session_id)).fetchone()
            cid = row["id"] if row else None
            keys: list[str] = []
            if cid is not None:
                keys = [r[0] for r in db.execute(
                    "SELECT image_key FROM messages WHERE conversation_id = ? AND image_key IS NOT NULL",
                    (cid,))]
                db.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
                db.execute("DELETE FROM notes WHERE conversation_id = ?", (cid,))
                db.execute("DELETE FROM answer_claims WHERE conversation_id = ?", (cid,))
                db.execute("DELETE FROM conversations WHERE id = ?", (cid,))
            db.execute("DELETE FROM proactive_messages WHERE site_id = ? AND session_id = ?",
                       (site_id, session_id))
            db.execute("DELETE FROM blocks WHERE site_id = ? AND value = ?", (site_id, session_id))
            db.execute("DELETE FROM events WHERE instr(payload, ?) > 0 OR instr(topic, ?) > 0"
                       " OR (json_valid(payload) AND json_extract(payload, '$.conversation_id') = ?)",
                       (session_id, session_id, cid if cid is not None else -1))
            if compact:  # the search index keeps deleted words in old segments until they are merged
                db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
            return keys

        keys = await self._run(self._tx, erase)
        if compact:
            await self._run(self._checkpoint)
        return keys

    def _checkpoint(self) -> None:
        """Copy the log into the database and empty it, so no old page of it keeps erased words.
        Another process reading at this moment makes it busy: try a few times, then leave it to
        SQLite's next automatic checkpoint."""
        assert self._db is not None
        for attempt in range(20):
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(0.05 * (attempt + 1))
        log.warning("the write-ahead log could not be emptied after an erase; it will be later")

    async def stale_sessions(self, site_id: int, *, updated_before: str, limit: int = 500) -> list[str]:
        rows = await self._run(
            self._all,
            "SELECT session_id FROM conversations WHERE site_id = ? AND updated_at < ?"
            " ORDER BY updated_at LIMIT ?", site_id, updated_before, limit)
        return [r[0] for r in rows]

    async def list_contacts(self, site_id: int, *, rated: bool = False, search: str | None = None,
                            limit: int = 500) -> list[Conversation]:
        sql = "SELECT * FROM conversations WHERE site_id = ?"
        params: list[Any] = [site_id]
        sql += (" AND rating IS NOT NULL" if rated else
                " AND (email IS NOT NULL OR phone IS NOT NULL OR contact_name IS NOT NULL)")
        if search:
            needle = "%" + str(search).lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            sql += (" AND (lower(coalesce(email, '')) LIKE ? ESCAPE '\\' OR lower(coalesce(contact_name, ''))"
                    " LIKE ? ESCAPE '\\' OR lower(coalesce(phone, '')) LIKE ? ESCAPE '\\')")
            params += [needle, needle, needle]
        sql += " ORDER BY updated_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return [_conversation(r) for r in await self._run(self._all, sql, *params)]

    # -- blocks -------------------------------------------------------------------------------
    async def add_block(
        self, site_id: int, kind: str, value: str, expires_at: float | None, reason: str | None
    ) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO blocks (site_id, kind, value, expires_at, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (site_id, kind, value, expires_at, reason, utc_now_iso()),
            )

        await self._run(self._tx, insert)

    async def remove_blocks(self, site_id: int, kind: str, value: str) -> int:
        def delete(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM blocks WHERE site_id = ? AND kind = ? AND value = ?", (site_id, kind, value)
            ).rowcount

        return await self._run(self._tx, delete)

    async def is_blocked(
        self, site_id: int, *, session_id: str, ip: str | None, email: str | None, now: float
    ) -> bool:
        return await self._read_one(*self._block_query(site_id, session_id, ip, email, now)) is not None

    @staticmethod
    def _block_query(site_id: int, session_id: str, ip: str | None, email: str | None,
                     now: float) -> tuple[Any, ...]:
        """The SQL and parameters finding a block that matches, if any."""
        candidates = [("session", session_id)]
        if ip:
            candidates.append(("ip", ip))
        if email:
            candidates.append(("email", email.lower()))
        match = " OR ".join("(kind = ? AND value = ?)" for _ in candidates)
        return (f"SELECT 1 FROM blocks WHERE site_id = ? AND ({match})"
                " AND (expires_at IS NULL OR expires_at > ?) LIMIT 1",
                site_id, *[part for pair in candidates for part in pair], now)

    # -- proactive ----------------------------------------------------------------------------
    async def add_proactive(
        self, site_id: int, session_id: str, content: str, sender: str, *,
        rule_key: str | None = None, deliver_at: float = 0.0,
    ) -> ProactiveMessage | None:
        def insert(db: sqlite3.Connection) -> sqlite3.Row | None:
            cur = db.execute(
                "INSERT INTO proactive_messages"
                " (site_id, session_id, content, sender, rule_key, deliver_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (site_id, session_id, content, sender, rule_key, deliver_at, utc_now_iso()),
            )
            if not cur.rowcount:
                return None
            return db.execute(
                "SELECT * FROM proactive_messages WHERE id = ?", (cur.lastrowid,)
            ).fetchone()

        row = await self._run(self._tx, insert)
        return _proactive(row) if row else None

    async def pending_proactive(
        self, site_id: int, session_id: str, *, now: float, limit: int = 50
    ) -> list[ProactiveMessage]:
        rows = await self._read_all(
            "SELECT * FROM proactive_messages WHERE site_id = ? AND session_id = ? AND acked = 0"
            " AND deliver_at <= ? ORDER BY id LIMIT ?",
            site_id,
            session_id,
            now,
            limit,
        )
        return [_proactive(r) for r in rows]

    async def next_proactive_due(self, site_id: int, session_id: str, *, now: float) -> float | None:
        row = await self._read_one(
            "SELECT MIN(deliver_at) AS due FROM proactive_messages"
            " WHERE site_id = ? AND session_id = ? AND acked = 0 AND deliver_at > ?",
            site_id,
            session_id,
            now,
        )
        return row["due"] if row and row["due"] is not None else None

    async def ack_proactive(self, site_id: int, session_id: str, through_id: int, *, now: float) -> None:
        def update(db: sqlite3.Connection) -> None:
            # A message not yet due was never delivered, whatever its id: it stays pending.
            db.execute(
                "UPDATE proactive_messages SET acked = 1"
                " WHERE site_id = ? AND session_id = ? AND id <= ? AND acked = 0 AND deliver_at <= ?",
                (site_id, session_id, through_id, now),
            )

        await self._run(self._tx, update)

    # -- knowledge ----------------------------------------------------------------------------
    @staticmethod
    def _bump_version(db: sqlite3.Connection, site_id: int) -> None:
        db.execute(
            "INSERT INTO knowledge_versions (site_id, version) VALUES (?, 1)"
            " ON CONFLICT (site_id) DO UPDATE SET version = version + 1",
            (site_id,),
        )

    async def add_document(
        self, site_id: int, title: str, url: str | None, content: str, *, file_name: str | None = None
    ) -> KnowledgeDocument:
        def insert(db: sqlite3.Connection) -> sqlite3.Row:
            cur = db.execute(
                "INSERT INTO documents (site_id, title, url, content, updated_at, file_name)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (site_id, title, url, content, utc_now_iso(), file_name),
            )
            self._bump_version(db, site_id)
            return db.execute("SELECT * FROM documents WHERE id = ?", (cur.lastrowid,)).fetchone()

        return _document(await self._run(self._tx, insert))

    async def list_documents(self, site_id: int, limit: int = 10_000) -> list[KnowledgeDocument]:
        rows = await self._read_all(
            "SELECT * FROM documents WHERE site_id = ? ORDER BY id LIMIT ?", site_id, limit
        )
        return [_document(r) for r in rows]

    async def remove_document(self, site_id: int, document_id: int) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            removed = db.execute(
                "DELETE FROM documents WHERE site_id = ? AND id = ?", (site_id, document_id)
            ).rowcount
            if removed:
                self._bump_version(db, site_id)
            return bool(removed)

        return await self._run(self._tx, delete)

    async def knowledge_version(self, site_id: int) -> str:
        return _knowledge_version(await self._read_one(KNOWLEDGE_VERSION_SQL, site_id))

    # -- fetch jobs ---------------------------------------------------------------------------
    async def add_fetch_job(self, site_id: int, url: str, origin: str, *, now: float,
                            keep: int = 20) -> FetchJob:
        def insert(db: sqlite3.Connection) -> sqlite3.Row:
            cur = db.execute(
                "INSERT INTO fetch_jobs (site_id, url, origin, state, started_at, updated_at)"
                " VALUES (?, ?, ?, 'fetching', ?, ?)", (site_id, url, origin, now, now))
            db.execute("DELETE FROM fetch_jobs WHERE site_id = ? AND id NOT IN"
                       " (SELECT id FROM fetch_jobs WHERE site_id = ? ORDER BY id DESC LIMIT ?)",
                       (site_id, site_id, max(keep, 1)))
            return db.execute("SELECT * FROM fetch_jobs WHERE id = ?", (cur.lastrowid,)).fetchone()

        return _fetch_job(await self._run(self._tx, insert))

    async def update_fetch_job(self, site_id: int, job_id: int, changes: dict[str, Any], *,
                               now: float) -> None:
        unknown = set(changes) - FETCH_JOB_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {**changes, "updated_at": now}
        if "errors" in values:
            values["errors"] = json.dumps(list(values["errors"]))
        assignments = ", ".join(f"{name} = ?" for name in values)

        def update(db: sqlite3.Connection) -> None:
            db.execute(f"UPDATE fetch_jobs SET {assignments} WHERE site_id = ? AND id = ?",
                       (*values.values(), site_id, job_id))

        await self._run(self._tx, update)

    async def list_fetch_jobs(self, site_id: int, limit: int = 20) -> list[FetchJob]:
        rows = await self._read_all(
            "SELECT * FROM fetch_jobs WHERE site_id = ? ORDER BY id DESC LIMIT ?", site_id, limit)
        return [_fetch_job(r) for r in rows]

    # -- answer claims ------------------------------------------------------------------------
    async def claim_answer(self, conversation_id: int, message_id: str, origin: str, *,
                           now: float, stale_after: float) -> bool:
        def claim(db: sqlite3.Connection) -> bool:
            return self._claim(db, conversation_id, message_id, origin, now, stale_after)

        return await self._run(self._tx, claim)

    @staticmethod
    def _claim(db: sqlite3.Connection, conversation_id: int, message_id: str, origin: str,
               now: float, stale_after: float) -> bool:
        db.execute(
            "INSERT INTO answer_claims (conversation_id, message_id, origin, claimed_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (conversation_id, message_id) DO UPDATE"
            " SET origin = excluded.origin, claimed_at = excluded.claimed_at"
            " WHERE answer_claims.origin = excluded.origin OR answer_claims.claimed_at < ?",
            (conversation_id, message_id, origin, now, now - stale_after),
        )
        row = db.execute(
            "SELECT origin FROM answer_claims WHERE conversation_id = ? AND message_id = ?",
            (conversation_id, message_id),
        ).fetchone()
        return bool(row and row["origin"] == origin)

    async def renew_claims(self, claims: list[tuple[int, str]], origin: str, *, now: float,
                           stale_after: float) -> list[bool]:
        return await self._run(self._tx, lambda db: [
            self._claim(db, conversation_id, message_id, origin, now, stale_after)
            for conversation_id, message_id in claims])

    @staticmethod
    def _release(db: sqlite3.Connection, conversation_id: int, message_id: str, origin: str) -> None:
        db.execute("DELETE FROM answer_claims WHERE conversation_id = ? AND message_id = ? AND origin = ?",
                   (conversation_id, message_id, origin))

    async def release_answer(self, conversation_id: int, message_id: str, origin: str) -> None:
        await self._run(self._tx, lambda db: self._release(db, conversation_id, message_id, origin))

    async def follow_answer(self, conversation_id: int, message_id: str, *, now: float) -> None:
        def follow(db: sqlite3.Connection) -> None:
            db.execute("UPDATE answer_claims SET followed_at = ? WHERE conversation_id = ? AND message_id = ?",
                       (now, conversation_id, message_id))

        await self._grouped(follow, here=True)

    async def followed_answers(self, claims: list[tuple[int, str]], *, since: float) -> list[bool]:
        followed: set[tuple[int, str]] = set()
        for start in range(0, len(claims), IDS_PER_QUERY):
            ids = sorted({conversation_id for conversation_id, _ in claims[start:start + IDS_PER_QUERY]})
            rows = await self._read_all(
                "SELECT conversation_id, message_id FROM answer_claims WHERE followed_at >= ?"
                f" AND conversation_id IN ({', '.join('?' * len(ids))})", since, *ids)
            followed.update((row[0], row[1]) for row in rows)
        return [claim in followed for claim in claims]

    async def finish_answer(
        self, conversation_id: int, reply_to: str, origin: str, *, role: str, content: str | None,
        sources: Iterable[Source] = (), status: str = "complete", usage: dict[str, Any] | None = None,
        relevance: float | None = None, handoff: str | None, events: Callable[[Message | None], Events],
    ) -> Message | None:
        insert_reply = None if content is None else self._message_insert(
            role, content, message_id=None, reply_to=reply_to, sources=sources, status=status,
            usage=usage, relevance=relevance)
        hand_over = (self._conversation_update(conversation_id, {"handoff": True, "handoff_reason": handoff})
                     if handoff else None)

        def finish(db: sqlite3.Connection) -> Message | None:
            reply = insert_reply(db, conversation_id) if insert_reply is not None else None
            if hand_over is not None:
                hand_over(db)
            self._insert_events(db, events(reply), origin, time.time())
            self._release(db, conversation_id, reply_to, origin)
            return reply

        return await self._grouped(finish, here=True)  # answers ending together share one transaction

    # -- events -------------------------------------------------------------------------------
    async def record_event(self, topic: str, kind: str, payload: dict[str, Any], origin: str) -> int:
        return (await self.record_events([(topic, kind, payload)], origin))[0]

    async def record_events(self, events: list[tuple[str, str, dict[str, Any]]], origin: str) -> list[int]:
        now = time.time()

        def insert(db: sqlite3.Connection) -> list[int]:
            return self._insert_events(db, events, origin, now)

        return await self._run(self._tx, insert)

    @staticmethod
    def _insert_events(db: sqlite3.Connection, events: list[tuple[str, str, dict[str, Any]]],
                       origin: str, now: float) -> list[int]:
        """One statement per EVENTS_PER_INSERT events (a write has two or so). Their ids come in
        order, one apart: the transaction holds the write lock, so no other row can take one."""
        ids: list[int] = []
        db.wrote_events = True  # type: ignore[attr-defined]  # a _Connection: rings at commit
        for start in range(0, len(events), EVENTS_PER_INSERT):
            batch = events[start:start + EVENTS_PER_INSERT]
            last = int(db.execute("INSERT INTO events (topic, kind, payload, origin, created_at) VALUES "
                                  + ", ".join(["(?, ?, ?, ?, ?)"] * len(batch)),
                                  [value for topic, kind, payload in batch
                                   for value in (topic, kind, json.dumps(payload), origin, now)]
                                  ).lastrowid or 0)
            ids.extend(range(last - len(batch) + 1, last + 1))
        return ids

    async def wait_for_news(self, timeout: float) -> bool:
        return await self._doorbell.wait(timeout)

    LATEST_EVENT = "SELECT COALESCE(MAX(id), 0) AS id FROM events"
    EVENTS_SINCE = "SELECT * FROM events WHERE id > ? AND origin != ? ORDER BY id LIMIT ?"

    async def latest_event_id(self) -> int:
        row = await self._read_one(self.LATEST_EVENT)
        return int(row["id"]) if row else 0

    async def events_and_latest(self, after: int, *, exclude_origin: str, limit: int
                                ) -> tuple[list[Event], int]:
        # One trip to a reader thread, not two: with rings, the feed reads on every write.
        def read() -> tuple[list[sqlite3.Row], int]:
            latest = int(self._select(self.LATEST_EVENT, (), False)["id"])
            return self._select(self.EVENTS_SINCE, (after, exclude_origin, limit), True), latest

        rows, latest = await self._on(self._readers, read)
        return [_event(r) for r in rows], latest

    async def events_since(self, after: int, *, exclude_origin: str, limit: int) -> list[Event]:
        return [_event(r) for r in await self._read_all(self.EVENTS_SINCE, after, exclude_origin, limit)]

    async def events_by_id(self, ids: list[int]) -> list[Event]:
        ids = [int(i) for i in ids[:1000]]
        if not ids:
            return []
        rows = await self._read_all(
            f"SELECT * FROM events WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id", *ids)
        return [_event(r) for r in rows]

    async def prune_events(self, older_than: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM events WHERE created_at < ?", (older_than,)).rowcount

        return await self._run(self._tx, delete)

    async def oldest_event_id(self) -> int:
        row = await self._run(self._one, "SELECT COALESCE(MIN(id), 0) AS id FROM events")
        return int(row["id"]) if row else 0

    async def events_for_topics(self, after: int, topics: tuple[str, ...], *,
                                limit: int) -> list[Event]:
        if not topics:
            return []
        rows = await self._run(
            self._all,
            f"SELECT * FROM events WHERE id > ? AND topic IN ({', '.join('?' * len(topics))})"
            " ORDER BY id LIMIT ?",
            after, *topics, limit,
        )
        return [_event(r) for r in rows]

    # -- operators ----------------------------------------------------------------------------
    def _operator_row(self, db: sqlite3.Connection, row: sqlite3.Row | None) -> Operator | None:
        if row is None:
            return None
        site_ids = tuple(r[0] for r in db.execute(
            "SELECT site_id FROM operator_sites WHERE operator_id = ? ORDER BY site_id", (row["id"],)))
        return Operator(
            id=row["id"], email=row["email"], name=row["name"], role=row["role"],
            password_hash=row["password_hash"], disabled=bool(row["disabled"]),
            created_at=row["created_at"], site_ids=site_ids, totp_secret=row["totp_secret"],
            recovery_codes=tuple(json.loads(row["recovery_codes"])), prefs=json.loads(row["prefs"]),
        )

    def _operator_where(self, where: str, *params: Any) -> Operator | None:
        assert self._db is not None
        row = self._db.execute(f"SELECT * FROM operators WHERE {where}", params).fetchone()
        return self._operator_row(self._db, row)

    async def create_operator(self, email: str, name: str, role: str, password_hash: str,
                              site_ids: Iterable[int] = ()) -> Operator:
        sites = list(site_ids)

        def insert(db: sqlite3.Connection) -> Operator:
            cur = db.execute(
                "INSERT INTO operators (email, name, role, password_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?)", (email, name, role, password_hash, utc_now_iso()))
            db.executemany("INSERT INTO operator_sites (operator_id, site_id) VALUES (?, ?)",
                           [(cur.lastrowid, site_id) for site_id in sites])
            row = db.execute("SELECT * FROM operators WHERE id = ?", (cur.lastrowid,)).fetchone()
            operator = self._operator_row(db, row)
            assert operator is not None
            return operator

        try:
            return await self._run(self._tx, insert)
        except sqlite3.IntegrityError as exc:
            raise DuplicateOperator(email) from exc

    async def get_operator(self, operator_id: int) -> Operator | None:
        return await self._run(self._operator_where, "id = ?", operator_id)

    async def get_operator_by_email(self, email: str) -> Operator | None:
        return await self._run(self._operator_where, "email = ?", email)

    async def list_operators(self, limit: int = 1000) -> list[Operator]:
        def read() -> list[Operator]:
            assert self._db is not None
            rows = self._db.execute("SELECT * FROM operators ORDER BY id LIMIT ?", (limit,)).fetchall()
            return [op for row in rows if (op := self._operator_row(self._db, row)) is not None]

        return await self._run(read)

    async def count_operators(self) -> int:
        row = await self._run(self._one, "SELECT COUNT(*) FROM operators")
        return int(row[0]) if row else 0

    async def update_operator(self, operator_id: int, changes: dict[str, Any]) -> None:
        unknown = set(changes) - OPERATOR_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not changes:
            return
        values = [json.dumps(list(v) if k == "recovery_codes" else v)
                  if k in ("recovery_codes", "prefs") else v for k, v in changes.items()]
        assignments = ", ".join(f"{name} = ?" for name in changes)

        def update(db: sqlite3.Connection) -> None:
            db.execute(f"UPDATE operators SET {assignments} WHERE id = ?", (*values, operator_id))

        await self._run(self._tx, update)

    async def set_operator_sites(self, operator_id: int, site_ids: Iterable[int]) -> None:
        sites = sorted(set(site_ids))

        def replace(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM operator_sites WHERE operator_id = ?", (operator_id,))
            db.executemany("INSERT INTO operator_sites (operator_id, site_id) VALUES (?, ?)",
                           [(operator_id, site_id) for site_id in sites])

        await self._run(self._tx, replace)

    # -- operator sessions, failures, setup tokens --------------------------------------------
    async def create_operator_session(self, session: OperatorSession) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO operator_sessions (token_hash, operator_id, created_at, last_seen, ip,"
                " user_agent, second_factor_done) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session.token_hash, session.operator_id, session.created_at, session.last_seen,
                 session.ip, session.user_agent, int(session.second_factor_done)))

        await self._run(self._tx, insert)

    async def get_operator_session(self, token_hash: str) -> OperatorSession | None:
        row = await self._run(self._one, "SELECT * FROM operator_sessions WHERE token_hash = ?",
                              token_hash)
        if row is None:
            return None
        data = dict(row)
        data["second_factor_done"] = bool(data["second_factor_done"])
        return OperatorSession(**data)

    async def touch_operator_session(self, token_hash: str, now: float,
                                     second_factor_done: bool | None = None) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute("UPDATE operator_sessions SET last_seen = ? WHERE token_hash = ?",
                       (now, token_hash))
            if second_factor_done is not None:
                db.execute("UPDATE operator_sessions SET second_factor_done = ? WHERE token_hash = ?",
                           (int(second_factor_done), token_hash))

        await self._run(self._tx, update)

    async def mark_operator_present(self, token_hash: str, now: float) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute("UPDATE operator_sessions SET present_at = ? WHERE token_hash = ?",
                       (now, token_hash))

        await self._run(self._tx, update)

    async def operators_present(self, *, since: float, site_id: int | None = None,
                                limit: int = 1000) -> list[int]:
        for_site = ("" if site_id is None else
                    " AND o.disabled = 0 AND (o.role = 'admin' OR EXISTS (SELECT 1 FROM operator_sites t"
                    " WHERE t.operator_id = o.id AND t.site_id = ?))")
        rows = await self._read_all(
            "SELECT DISTINCT s.operator_id FROM operator_sessions s JOIN operators o ON o.id = s.operator_id"
            " WHERE s.second_factor_done = 1 AND (s.last_seen >= ? OR s.present_at >= ?)" + for_site +
            " ORDER BY s.operator_id LIMIT ?", since, since, *(() if site_id is None else (site_id,)), limit)
        return [row["operator_id"] for row in rows]

    async def delete_operator_sessions(self, *, operator_id: int | None = None,
                                       token_hash: str | None = None,
                                       idle_before: float | None = None) -> int:
        clauses, params = [], []
        for clause, value in (("operator_id = ?", operator_id), ("token_hash = ?", token_hash),
                              ("last_seen < ?", idle_before)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if not clauses:
            raise ValueError("say which sessions to delete")

        def delete(db: sqlite3.Connection) -> int:
            return db.execute(f"DELETE FROM operator_sessions WHERE {' AND '.join(clauses)}",
                              params).rowcount

        return await self._run(self._tx, delete)

    async def record_login_failure(self, keys: Iterable[str], now: float) -> None:
        rows = [(key, now) for key in keys]

        def insert(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO login_failures (key, at) VALUES (?, ?)", rows)

        await self._run(self._tx, insert)

    async def count_login_failures(self, key: str, since: float) -> int:
        row = await self._run(self._one, "SELECT COUNT(*) FROM login_failures WHERE key = ? AND at >= ?",
                              key, since)
        return int(row[0]) if row else 0

    async def clear_login_failures(self, key: str, *, before: float | None = None) -> None:
        def delete(db: sqlite3.Connection) -> None:
            if before is None:
                db.execute("DELETE FROM login_failures WHERE key = ?", (key,))
            else:
                db.execute("DELETE FROM login_failures WHERE key = ? AND at < ?", (key, before))

        await self._run(self._tx, delete)

    async def prune_login_failures(self, before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM login_failures WHERE at < ?", (before,)).rowcount

        return await self._run(self._tx, delete)

    async def add_setup_token(self, token_hash: str, expires_at: float) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO setup_tokens (token_hash, expires_at) VALUES (?, ?)",
                       (token_hash, expires_at))

        await self._run(self._tx, insert)

    async def use_setup_token(self, token_hash: str, now: float, *, consume: bool = True) -> bool:
        if not consume:
            row = await self._run(self._one, "SELECT 1 FROM setup_tokens WHERE token_hash = ?"
                                  " AND used = 0 AND expires_at > ?", token_hash, now)
            return row is not None

        def use(db: sqlite3.Connection) -> bool:
            return db.execute(
                "UPDATE setup_tokens SET used = 1 WHERE token_hash = ? AND used = 0 AND expires_at > ?",
                (token_hash, now)).rowcount == 1

        return await self._run(self._tx, use)

    # -- audit log ----------------------------------------------------------------------------
    async def add_audit(self, *, operator_id: int | None, operator_email: str | None, action: str,
                        site_id: int | None, target: str | None, detail: dict[str, Any],
                        ip: str | None) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO audit_log (created_at, operator_id, operator_email, action, site_id,"
                " target, detail, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (utc_now_iso(), operator_id, operator_email, action, site_id, target,
                 json.dumps(detail), ip))

        await self._run(self._tx, insert)

    async def list_audit(self, *, limit: int = 200, before: int | None = None) -> list[AuditEntry]:
        rows = await self._run(self._all, "SELECT * FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT ?",
                               before or 2**62, limit)
        return [AuditEntry(**{**dict(r), "detail": json.loads(r["detail"])}) for r in rows]

    # -- the dashboard's reads ----------------------------------------------------------------
    async def get_conversation_by_id(self, conversation_id: int) -> Conversation | None:
        row = await self._run(self._one, "SELECT * FROM conversations WHERE id = ?", conversation_id)
        return _conversation(row) if row else None

    SEARCH_HITS = 5000  # most matching messages a search looks at, newest first

    INBOX_FILTERS = {
        "all": "c.closed = 0",
        "handoff": "c.closed = 0 AND c.handoff = 1",
        "mine": "c.closed = 0 AND c.assignee_id = :operator_id",
        "unassigned": "c.closed = 0 AND c.assignee_id IS NULL",
        "operator": "c.closed = 0 AND c.mode = 'operator'",
        "ai": "c.closed = 0 AND c.mode = 'ai'",
        "closed": "c.closed = 1",
    }

    async def list_inbox(self, site_ids: Iterable[int], *, status: str = "all",
                         operator_id: int | None = None, search: str | None = None,
                         limit: int = 50, before: tuple[str, int] | None = None,
                         visitor: str | None = None) -> list[InboxEntry]:
        sites = sorted(set(site_ids))
        if not sites:
            return []
        before_at, before_id = before or ("9999", 0)
        params: dict[str, Any] = {"operator_id": operator_id, "limit": limit,
                                  "before_at": before_at, "before_id": before_id}
        params.update({f"s{n}": site for n, site in enumerate(sites)})
        where = [f"c.site_id IN ({', '.join(f':s{n}' for n in range(len(sites)))})",
                 self.INBOX_FILTERS.get(status, self.INBOX_FILTERS["all"]),
                 "(c.updated_at < :before_at OR (c.updated_at = :before_at AND c.id < :before_id))",
                 # a visitor who only browsed has a row (for "visitors online") but no chat
                 "EXISTS (SELECT 1 FROM messages e WHERE e.conversation_id = c.id)"]
        if search:
            # Each word a prefix, quoted, so visitor-typed punctuation is never FTS syntax.
            words = [w.replace('"', '""') for w in search.split()[:10]]
            params["match"] = " ".join(f'"{w}"*' for w in words)
            # The newest matches first, and only so many: a word in every other message must
            # not make the inbox read all of them (the page shows the newest conversations).
            where.append("c.id IN (SELECT m.conversation_id FROM messages m WHERE m.id IN ("
                         "SELECT rowid FROM messages_fts WHERE messages_fts MATCH :match"
                         " ORDER BY rowid DESC LIMIT :search_hits))")
            params["search_hits"] = self.SEARCH_HITS
        if visitor:
            where.append("(lower(c.email) = :visitor OR c.session_id = :visitor)")
            params["visitor"] = visitor
        sql = (f"SELECT c.* FROM conversations c WHERE {' AND '.join(where)}"
               " ORDER BY c.updated_at DESC, c.id DESC LIMIT :limit")

        def read() -> list[InboxEntry]:
            assert self._db is not None
            entries = []
            for row in self._db.execute(sql, params).fetchall():
                conversation = _conversation(row)
                last = self._db.execute(
                    "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT 1",
                    (conversation.id,)).fetchone()
                unread = self._db.execute(
                    "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND id > ?"
                    " AND role = 'visitor'", (conversation.id, conversation.read_through)).fetchone()[0]
                entries.append(InboxEntry(conversation, _message(last) if last else None, int(unread)))
            return entries

        return await self._run(read)

    async def visitors_online(self, site_ids: Iterable[int], *, since: float,
                              limit: int = 200) -> list[Conversation]:
        sites = sorted(set(site_ids))
        if not sites:
            return []
        rows = await self._run(
            self._all,
            f"SELECT * FROM conversations WHERE site_id IN ({', '.join('?' * len(sites))})"
            " AND last_seen_at >= ? ORDER BY last_seen_at DESC LIMIT ?",
            *sites, since, limit)
        return [_conversation(r) for r in rows]

    async def add_note(self, conversation_id: int, operator_id: int | None, author: str,
                       content: str) -> Note:
        def insert(db: sqlite3.Connection) -> sqlite3.Row:
            cur = db.execute(
                "INSERT INTO notes (conversation_id, operator_id, author, content, created_at)"
                " VALUES (?, ?, ?, ?, ?)", (conversation_id, operator_id, author, content, utc_now_iso()))
            return db.execute("SELECT * FROM notes WHERE id = ?", (cur.lastrowid,)).fetchone()

        return Note(**dict(await self._run(self._tx, insert)))

    async def list_notes(self, conversation_id: int, limit: int = 500) -> list[Note]:
        rows = await self._run(self._all, "SELECT * FROM notes WHERE conversation_id = ? ORDER BY id LIMIT ?",
                               conversation_id, limit)
        return [Note(**dict(r)) for r in rows]

    async def list_blocks(self, site_id: int, *, now: float, limit: int = 500) -> list[dict[str, Any]]:
        rows = await self._run(
            self._all,
            "SELECT kind, value, reason, expires_at FROM blocks WHERE site_id = ?"
            " AND (expires_at IS NULL OR expires_at > ?) ORDER BY id DESC LIMIT ?", site_id, now, limit)
        return [dict(r) for r in rows]

    async def list_canned_replies(self, site_id: int, limit: int = 500) -> list[CannedReply]:
        rows = await self._run(self._all, "SELECT * FROM canned_replies WHERE site_id = ?"
                               " ORDER BY shortcut LIMIT ?", site_id, limit)
        return [CannedReply(**dict(r)) for r in rows]

    async def save_canned_reply(self, site_id: int, shortcut: str, content: str) -> CannedReply:
        def upsert(db: sqlite3.Connection) -> sqlite3.Row:
            db.execute("INSERT INTO canned_replies (site_id, shortcut, content) VALUES (?, ?, ?)"
                       " ON CONFLICT (site_id, shortcut) DO UPDATE SET content = excluded.content",
                       (site_id, shortcut, content))
            return db.execute("SELECT * FROM canned_replies WHERE site_id = ? AND shortcut = ?",
                              (site_id, shortcut)).fetchone()

        return CannedReply(**dict(await self._run(self._tx, upsert)))

    async def remove_canned_reply(self, site_id: int, reply_id: int) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            return bool(db.execute("DELETE FROM canned_replies WHERE site_id = ? AND id = ?",
                                   (site_id, reply_id)).rowcount)

        return await self._run(self._tx, delete)
