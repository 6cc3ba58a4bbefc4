"""The scale-out store: MongoDB through PyMongo's asyncio API (AsyncMongoClient).

How it keeps the rules of base.Store:
- Integer ids from one atomic counter per kind of record (`find_one_and_update` with `$inc`), so
  cursors are the same numbers as on SQLite. A counter alone hands out ids in *allocation* order,
  not commit order; where a reader walks a cursor (one conversation's messages, one session's
  proactive messages) writers take a short lease on that scope first, so ids there commit in order.
- Every value going into a filter is checked for its plain type first (`_str`, `_int`): a request
  value such as {"$gt": ""} raises TypeError and never reaches the driver.
- Every call has a deadline (the client's timeoutMS, default 5 s); any driver error becomes
  StoreUnavailable (503), and the driver reconnects by itself when the server is back.
- Nothing relies on what the nx-27017 stand-in gets wrong: no ObjectIds, no multi-document
  transactions, and a conditional upsert that loses a race may either raise a duplicate-key error
  or return None; both are handled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import time
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.uri_parser import parse_uri

from server.store.base import (
    DuplicateMessageId,
    DuplicateOperator,
    Events,
    Store,
    StoreUnavailable,
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
    iso_seconds_between,
    utc_now_iso,
    check_handoff,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

DEFAULT_DATABASE = "parley"
CLIENT_DEFAULTS = {"timeoutMS": 5000, "serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000}
LEASE_SECONDS = 10.0  # a writer that died holding a lease blocks its scope at most this long
LEASE_WAIT_SECONDS = 5.0
NEVER = 1e18  # expires_at of a block without expiry: one comparison, no null matching
RETAIN_EVENTS = timedelta(hours=1)  # TTL backstop; serve.py prunes events after 10 minutes
RETAIN_CLAIMS = timedelta(days=1)
NO_CHANGE_STREAMS = (40573, 40324, 136)  # "only supported on replica sets", unknown stage, disabled


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, not {type(value).__name__}")
    return value


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, not {type(value).__name__}")
    return float(value)


def _folded(text: str) -> str:
    """Text as search compares it: case folded, accents dropped (Montréal -> montreal)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _fetch_job(doc: dict[str, Any]) -> FetchJob:
    return FetchJob(id=doc["_id"], site_id=doc["site_id"], url=doc["url"], origin=doc["origin"],
                    state=doc["state"], added=doc["added"], message=doc["message"], done=doc["done"],
                    total=doc["total"], errors=list(doc["errors"]), started_at=doc["started_at"],
                    updated_at=doc["updated_at"])


def _utc(seconds_from_now: float = 0.0) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)


def _guarded(method: F) -> F:
    """Driver errors become StoreUnavailable; the caller answers 503 and nothing is half-written."""

    @functools.wraps(method)
    async def guarded(self: MongoStore, *args: Any, **kwargs: Any) -> Any:
        if self._db is None:
            raise StoreUnavailable("The store is not open.")
        try:
            return await method(self, *args, **kwargs)
        except PyMongoError as exc:
            log.error("mongodb %s failed: %s", method.__name__, exc)
            raise StoreUnavailable("The database is unavailable; please try again.") from exc

    return guarded  # type: ignore[return-value]


def _plain_values(changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"{name} is a plain value")


def _site(doc: dict[str, Any]) -> Site:
    return Site(id=doc["_id"], site_key=doc["site_key"], name=doc["name"],
                allowed_origins=list(doc.get("allowed_origins") or []),
                settings=dict(doc.get("settings") or {}), enabled=bool(doc.get("enabled", True)),
                created_at=doc["created_at"])


CONVERSATION_FIELDS = ("site_id", "session_id", "mode", "created_at", "updated_at", *sorted(
    CONVERSATION_UPDATABLE - {"mode"}), *FIRST_MESSAGE_FIELD.values(), "handoff_at", "first_reply_wait")


def _conversation(doc: dict[str, Any]) -> Conversation:
    data = {name: doc.get(name) for name in CONVERSATION_FIELDS}
    data["handoff"] = bool(data["handoff"])
    data["closed"] = bool(data["closed"])
    data["read_through"] = int(data["read_through"] or 0)
    return Conversation(id=doc["_id"], **data)


def _message(doc: dict[str, Any]) -> Message:
    return Message(
        id=doc["_id"], conversation_id=doc["conversation_id"], role=doc["role"], content=doc["content"],
        created_at=doc["created_at"], message_id=doc.get("message_id"), reply_to=doc.get("reply_to"),
        image_key=doc.get("image_key"), operator_name=doc.get("operator_name"),
        sources=[Source(**s) for s in doc.get("sources") or []], status=doc.get("status", "complete"),
        usage=doc.get("usage"), relevance=doc.get("relevance"))


def _proactive(doc: dict[str, Any]) -> ProactiveMessage:
    return ProactiveMessage(id=doc["_id"], site_id=doc["site_id"], session_id=doc["session_id"],
                            content=doc["content"], sender=doc["sender"], created_at=doc["created_at"])


def _document(doc: dict[str, Any]) -> KnowledgeDocument:
    return KnowledgeDocument(id=doc["_id"], site_id=doc["site_id"], title=doc["title"], url=doc.get("url"),
                             content=doc["content"], updated_at=doc["updated_at"], file_name=doc.get("file_name"))


def _event(doc: dict[str, Any]) -> Event:
    return Event(id=doc["_id"], topic=doc["topic"], kind=doc["kind"], payload=dict(doc.get("payload") or {}),
                 origin=doc["origin"])


def _partial_string(field: str) -> dict[str, Any]:
    return {"partialFilterExpression": {field: {"$type": "string"}}}


# (collection, keys, options): created at start-up; creating an existing index is a no-op.
INDEXES: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
    ("sites", [("site_key", ASCENDING)], {"unique": True}),
    ("conversations", [("site_id", ASCENDING), ("session_id", ASCENDING)], {"unique": True}),
    ("conversations", [("site_id", ASCENDING), ("updated_at", DESCENDING)], {}),  # the inbox
    # History. (conversation_id, _id) would also serve the sort, but the stand-in cannot insert
    # into a collection with _id in a compound index; a conversation's messages sort in memory.
    ("messages", [("conversation_id", ASCENDING)], {}),
    ("messages", [("conversation_id", ASCENDING), ("message_id", ASCENDING)],
     {"unique": True, **_partial_string("message_id")}),
    ("messages", [("conversation_id", ASCENDING), ("reply_to", ASCENDING)], _partial_string("reply_to")),
    ("messages", [("site_id", ASCENDING), ("created_at", ASCENDING)], {}),  # caps and counts
    ("messages", [("site_id", ASCENDING), ("relevance", ASCENDING)], {}),  # knowledge gaps
    ("blocks", [("site_id", ASCENDING), ("kind", ASCENDING), ("value", ASCENDING)], {}),
    ("blocks", [("expire_at", ASCENDING)], {"expireAfterSeconds": 0}),  # expired blocks go away
    ("proactive_messages", [("site_id", ASCENDING), ("session_id", ASCENDING), ("acked", ASCENDING)], {}),
    ("proactive_messages", [("site_id", ASCENDING), ("session_id", ASCENDING), ("rule_key", ASCENDING)],
     {"unique": True, **_partial_string("rule_key")}),
    ("documents", [("site_id", ASCENDING)], {}),
    ("answer_claims", [("expire_at", ASCENDING)], {"expireAfterSeconds": 0}),
    ("fetch_jobs", [("site_id", ASCENDING)], {}),
    ("events", [("created_at", ASCENDING)], {}),
    ("events", [("expire_at", ASCENDING)], {"expireAfterSeconds": 0}),
    ("leases", [("expire_at", ASCENDING)], {"expireAfterSeconds": 0}),
    ("events", [("topic", ASCENDING)], {}),  # the dashboard's feed
    ("conversations", [("site_id", ASCENDING), ("last_seen_at", DESCENDING)], {}),  # visitors online
    ("conversations", [("site_id", ASCENDING), ("first_visitor_at", ASCENDING)], {}),  # the numbers
    ("conversations", [("site_id", ASCENDING), ("handoff_at", DESCENDING)], {}),  # handoff questions
    ("operators", [("email", ASCENDING)], {"unique": True}),
    ("operator_sessions", [("operator_id", ASCENDING)], {}),
    ("login_failures", [("key", ASCENDING), ("at", ASCENDING)], {}),
    ("login_failures", [("expire_at", ASCENDING)], {"expireAfterSeconds": 0}),
    ("notes", [("conversation_id", ASCENDING)], {}),
    ("canned_replies", [("site_id", ASCENDING), ("shortcut", ASCENDING)], {"unique": True}),
)


class MongoEventStream:
    """A change stream on the events collection, as server/feed.py reads it."""

    BATCH = 200
    MIN_EMPTY_ROUND = 0.05  # a server that answers an await at once must not make us spin

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def resume_token(self) -> Any:
        return self._stream.resume_token

    async def next_batch(self) -> list[Event]:
        started = time.monotonic()
        events: list[Event] = []
        try:
            while len(events) < self.BATCH:
                change = await self._stream.try_next()
                if change is None:
                    break
                document = change.get("fullDocument")
                if document:
                    events.append(_event(document))
        except PyMongoError as exc:
            raise StoreUnavailable(f"the change stream failed: {exc}") from exc
        if not events:
            await asyncio.sleep(max(0.0, self.MIN_EMPTY_ROUND - (time.monotonic() - started)))
        return events

    async def close(self) -> None:
        try:
            await self._stream.close()
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc


class MongoStore(Store):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        parsed = parse_uri(uri)
        self.database_name = parsed.get("database") or DEFAULT_DATABASE
        given = {name.lower() for name in parsed.get("options", {})}
        # Our deadlines unless the URI sets its own.
        self._client_options = {k: v for k, v in CLIENT_DEFAULTS.items() if k.lower() not in given}
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: Any = None

    def __repr__(self) -> str:  # the URI may hold a password
        return f"MongoStore(database={self.database_name!r})"

    # -- plumbing -----------------------------------------------------------------------------
    async def open(self) -> None:
        self._client = AsyncMongoClient(self.uri, appname="parley", **self._client_options)
        self._db = self._client[self.database_name]
        try:
            for collection, keys, options in INDEXES:
                await self._db[collection].create_index(keys, **options)
        except PyMongoError as exc:
            await self.close()
            reason = re.split(r", Timeout:| \(configured timeouts", str(exc))[0][:300]  # not the topology
            raise StoreUnavailable(f"cannot reach MongoDB for database {self.database_name!r}: {reason}") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None
        self._db = None

    @_guarded
    async def ping(self) -> None:
        await self._db.command("ping")

    async def _next_id(self, name: str, count: int = 1) -> int:
        """The last of `count` fresh ids for `name` (so the first is this minus count, plus one)."""
        for _ in range(3):
            try:
                doc = await self._db.counters.find_one_and_update(
                    {"_id": name}, {"$inc": {"seq": count}}, upsert=True, return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:  # two first-ever upserts raced; the loser tries again
                continue
            if doc is not None:
                return int(doc["seq"])
        raise StoreUnavailable(f"could not allocate an id for {name}")

    async def _take_lease(self, scope: str, holder: str) -> bool:
        now = time.time()
        try:
            doc = await self._db.leases.find_one_and_update(
                {"_id": scope, "until": {"$lt": now}},
                {"$set": {"holder": holder, "until": now + LEASE_SECONDS, "expire_at": _utc(86400)}},
                upsert=True, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:  # held by someone else: the upsert's insert collided
            return False
        return doc is not None and doc.get("holder") == holder

    async def _ordered_insert(self, scope: str, collection: str, document: dict[str, Any],
                              before_insert: Callable[[], Awaitable[dict[str, Any]]] | None = None
                              ) -> dict[str, Any]:
        """Insert with a fresh id while holding `scope`'s lease, so ids within the scope commit in
        increasing order (one writer at a time; a write takes milliseconds)."""
        holder = secrets.token_hex(8)
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        pause = 0.002
        while not await self._take_lease(scope, holder):
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"timed out waiting to write to {scope}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        try:
            if before_insert is not None:
                document = {**await before_insert(), **document}
            document = {"_id": await self._next_id(collection), **document}
            await self._db[collection].insert_one(document)
            return document
        finally:
            await self._db.leases.update_one({"_id": scope, "holder": holder}, {"$set": {"until": 0}})

    # -- sites --------------------------------------------------------------------------------
    @_guarded
    async def create_site(
        self, site_key: str, name: str, allowed_origins: list[str], settings: dict[str, Any]
    ) -> Site:
        document = {"_id": await self._next_id("sites"), "site_key": _str(site_key), "name": _str(name),
                    "allowed_origins": [_str(o) for o in allowed_origins], "settings": dict(settings),
                    "revision": 0, "enabled": True, "created_at": utc_now_iso()}
        await self._db.sites.insert_one(document)
        return _site(document)

    @_guarded
    async def get_site_by_key(self, site_key: str) -> Site | None:
        doc = await self._db.sites.find_one({"site_key": _str(site_key)})
        return _site(doc) if doc else None

    @_guarded
    async def list_sites(self, limit: int = 1000) -> list[Site]:
        return [_site(d) async for d in self._db.sites.find({}).sort("_id", ASCENDING).limit(_int(limit))]

    @_guarded
    async def update_site(self, site_id: int, *, name: str | None = None,
                          allowed_origins: list[str] | None = None, site_key: str | None = None) -> Site:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _str(name)
        if allowed_origins is not None:
            changes["allowed_origins"] = [_str(o) for o in allowed_origins]
        if site_key is not None:
            changes["site_key"] = _str(site_key)
        if changes:
            await self._db.sites.update_one({"_id": _int(site_id)}, {"$set": changes})
        doc = await self._db.sites.find_one({"_id": _int(site_id)})
        if doc is None:
            raise StoreUnavailable(f"site {site_id} does not exist")
        return _site(doc)

    @_guarded
    async def update_site_settings(self, site_id: int, changes: dict[str, Any]) -> Site:
        for key in changes:
            if not isinstance(key, str) or not key or key.startswith("$") or "." in key:
                raise ValueError(f"not a settings name: {key!r}")
        # Compare and swap on a revision: a concurrent change of another key is kept. (Not one
        # $set per key: the stand-in stores a boolean set that way as 0 or 1.)
        for _ in range(20):
            doc = await self._db.sites.find_one({"_id": _int(site_id)})
            if doc is None:
                raise StoreUnavailable(f"site {site_id} does not exist")
            if not changes:
                return _site(doc)
            merged = {**(doc.get("settings") or {}), **changes}
            revision = doc["revision"] if "revision" in doc else {"$exists": False}
            result = await self._db.sites.update_one(
                {"_id": site_id, "revision": revision},
                {"$set": {"settings": merged}, "$inc": {"revision": 1}})
            if result.modified_count:
                return _site({**doc, "settings": merged})
        raise StoreUnavailable("the site's settings kept changing; please try again")

    # -- conversations ------------------------------------------------------------------------
    @_guarded
    async def get_conversation(self, site_id: int, session_id: str) -> Conversation | None:
        doc = await self._db.conversations.find_one({"site_id": _int(site_id), "session_id": _str(session_id)})
        return _conversation(doc) if doc else None

    @_guarded
    async def ensure_conversation(
        self, site_id: int, session_id: str, context: dict[str, Any]
    ) -> Conversation:
        key = {"site_id": _int(site_id), "session_id": _str(session_id)}
        doc = await self._db.conversations.find_one(key)
        if doc is None:
            fields = {k: _opt_str(v) for k, v in context.items() if k in ("lang", "page_url", "page_title", "ip")}
            now = utc_now_iso()
            new = {"_id": await self._next_id("conversations"), "mode": "ai", "handoff": False,
                   "created_at": now, "updated_at": now, **fields}
            try:
                await self._db.conversations.update_one(key, {"$setOnInsert": new}, upsert=True)
            except DuplicateKeyError:
                pass  # another process created it first: theirs stands
            doc = await self._db.conversations.find_one(key)
            if doc is None:
                raise StoreUnavailable("the conversation was not stored")
        return _conversation(doc)

    @_guarded
    async def update_conversation(self, conversation_id: int, changes: dict[str, Any]) -> None:
        unknown = set(changes) - CONVERSATION_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not changes:
            return
        changes = check_handoff(changes)
        _plain_values(changes)
        update: dict[str, Any] = {"$set": dict(changes)}
        if set(changes) - QUIET_CONVERSATION_FIELDS:
            update["$set"]["updated_at"] = utc_now_iso()
        if changes.get("handoff") is True:  # the first handoff is kept for the numbers (never null)
            update["$min"] = {"handoff_at": utc_now_iso()}
        await self._db.conversations.update_one({"_id": _int(conversation_id)}, update)

    @_guarded
    async def write_presence(self, changes: dict[int, dict[str, Any]], *, events: Events,
                             origin: str) -> None:
        for change in changes.values():
            check_presence(change)
            _plain_values(change)
        updates = [UpdateOne({"_id": _int(conversation_id)}, {"$set": dict(change)})
                   for conversation_id, change in changes.items() if change]
        if updates:  # one round trip for the batch
            await self._db.conversations.bulk_write(updates, ordered=False)
        if events:
            await self.record_events(events, origin)

    # -- messages -----------------------------------------------------------------------------
    @_guarded
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
        conversation_id = _int(conversation_id)
        now = utc_now_iso()
        document = {"conversation_id": conversation_id, "role": _str(role), "content": _str(content),
                    "message_id": _opt_str(message_id), "reply_to": _opt_str(reply_to),
                    "image_key": _opt_str(image_key), "operator_name": _opt_str(operator_name),
                    "sources": [s.as_dict() for s in sources], "status": _str(status),
                    "created_at": now, "usage": dict(usage) if usage is not None else None,
                    "relevance": None if relevance is None else _num(relevance),
                    "search_text": _folded(content)}

        async def touch_conversation() -> dict[str, Any]:
            # Messages carry their site and session, so counts need no join. The first message of
            # each role is kept on the conversation ($min on a missing field sets it; it is never null).
            update: dict[str, Any] = {"$set": {"updated_at": now, "has_messages": True}}
            first = FIRST_MESSAGE_FIELD.get(document["role"])
            if first is not None:
                update["$min"] = {first: now}
            if document["role"] == "operator":  # a person's message answers the handoff
                update["$set"].update(handoff=False, handoff_reason=None)
            conversation = await self._db.conversations.find_one_and_update({"_id": conversation_id}, update)
            if conversation is None:
                raise StoreUnavailable(f"conversation {conversation_id} does not exist")
            handoff_at = conversation.get("handoff_at")
            if document["role"] == "operator" and handoff_at and conversation.get("first_reply_wait") is None:
                await self._db.conversations.update_one(
                    {"_id": conversation_id, "first_reply_wait": {"$exists": False}},
                    {"$set": {"first_reply_wait": float(iso_seconds_between(handoff_at, now))}})
            return {"site_id": conversation["site_id"], "session_id": conversation["session_id"]}

        try:
            stored = await self._ordered_insert(f"messages:{conversation_id}", "messages", document,
                                                touch_conversation)
        except DuplicateKeyError as exc:
            raise DuplicateMessageId(message_id) from exc
        return _message(stored)

    @_guarded
    async def count_messages(
        self, site_id: int, *, since: str, role: str | None = None, session_id: str | None = None
    ) -> int:
        query: dict[str, Any] = {"site_id": _int(site_id), "created_at": {"$gte": _str(since)}}
        if role is not None:
            query["role"] = _str(role)
        if session_id is not None:
            query["session_id"] = _str(session_id)
        return await self._db.messages.count_documents(query)

    @_guarded
    async def get_visitor_message(self, conversation_id: int, message_id: str) -> Message | None:
        doc = await self._db.messages.find_one(
            {"conversation_id": _int(conversation_id), "message_id": _str(message_id)})
        return _message(doc) if doc else None

    @_guarded
    async def get_reply(self, conversation_id: int, message_id: str) -> Message | None:
        doc = await self._db.messages.find_one(
            {"conversation_id": _int(conversation_id), "reply_to": _str(message_id)},
            sort=[("_id", DESCENDING)])
        return _message(doc) if doc else None

    @_guarded
    async def list_messages(
        self,
        conversation_id: int,
        *,
        after: int | None = None,
        limit: int = 50,
        roles: tuple[str, ...] | None = None,
    ) -> list[Message]:
        query: dict[str, Any] = {"conversation_id": _int(conversation_id), "_id": {"$gt": _int(after or 0)}}
        if roles:
            query["role"] = {"$in": [_str(r) for r in roles]}
        cursor = self._db.messages.find(query).sort("_id", ASCENDING).limit(_int(limit))
        return [_message(d) async for d in cursor]

    @_guarded
    async def first_visitor_messages(self, conversation_ids: list[int]) -> dict[int, str]:
        cursor = await self._db.messages.aggregate([
            {"$match": {"conversation_id": {"$in": [_int(i) for i in conversation_ids]}, "role": "visitor"}},
            {"$sort": {"_id": ASCENDING}},
            {"$group": {"_id": "$conversation_id", "content": {"$first": "$content"}}}])
        return {doc["_id"]: doc["content"] async for doc in cursor}

    @_guarded
    async def recent_messages(self, conversation_id: int, limit: int) -> list[Message]:
        cursor = self._db.messages.find({"conversation_id": _int(conversation_id)}).sort(
            "_id", DESCENDING).limit(_int(limit))
        return [_message(d) async for d in cursor][::-1]

    @_guarded
    async def knowledge_gaps(self, site_id: int, *, below: float, limit: int = 50) -> list[KnowledgeGap]:
        cursor = self._db.messages.find(
            {"site_id": _int(site_id), "role": "ai", "relevance": {"$lt": _num(below)}}
        ).sort("_id", DESCENDING).limit(_int(limit))
        gaps = []
        async for answer in cursor:
            question = await self._db.messages.find_one(
                {"conversation_id": answer["conversation_id"], "message_id": answer.get("reply_to")})
            if question is not None:
                gaps.append(KnowledgeGap(question["content"], answer["relevance"], answer["session_id"],
                                         question["created_at"]))
        return gaps

    @_guarded
    async def handoff_questions(self, site_id: int, *, limit: int = 50) -> list[KnowledgeGap]:
        cursor = self._db.conversations.find(
            {"site_id": _int(site_id), "handoff_at": {"$type": "string"}},
            projection={"session_id": 1, "handoff_at": 1}).sort("handoff_at", DESCENDING).limit(_int(limit))
        gaps = []
        async for conversation in cursor:
            question = await self._db.messages.find_one(
                {"conversation_id": conversation["_id"], "role": "visitor",
                 "created_at": {"$lte": conversation["handoff_at"]}}, sort=[("_id", DESCENDING)])
            if question is None:
                continue
            answer = question.get("message_id") and await self._db.messages.find_one(
                {"conversation_id": conversation["_id"], "reply_to": question["message_id"], "role": "ai"},
                sort=[("_id", DESCENDING)])
            gaps.append(KnowledgeGap(question["content"], answer.get("relevance") if answer else None,
                                     conversation["session_id"], question["created_at"], handoff=True))
        return gaps

    @_guarded
    async def site_activity(self, site_id: int, *, since: str, until: str) -> SiteActivity:
        started = {"site_id": _int(site_id), "first_visitor_at": {"$gte": _str(since), "$lt": _str(until)}}
        unset = {"$exists": False}  # these fields are never stored as null
        conversations = self._db.conversations
        answered_query = {**started, "first_reply_wait": {"$type": "number"}}
        answered = await conversations.count_documents(answered_query)
        median = None
        if answered:  # the middle one or two waits, found by the database
            cursor = conversations.find(answered_query, projection={"first_reply_wait": 1}).sort(
                "first_reply_wait", ASCENDING).skip((answered - 1) // 2).limit(2 - answered % 2)
            middle = [doc["first_reply_wait"] async for doc in cursor]
            median = sum(middle) / len(middle) if middle else None
        ratings = await conversations.aggregate([
            {"$match": {**started, "rating": {"$in": [1, 2, 3, 4, 5]}}},
            {"$group": {"_id": "$rating", "n": {"$sum": 1}}}])
        hours = await self._db.messages.aggregate([
            {"$match": {"site_id": _int(site_id), "role": "visitor",
                        "created_at": {"$gte": _str(since), "$lt": _str(until)}}},
            {"$group": {"_id": {"$substr": ["$created_at", 0, 13]}, "n": {"$sum": 1}}}])
        by_hour = {doc["_id"]: doc["n"] async for doc in hours}
        return SiteActivity(
            conversations=await conversations.count_documents(started),
            ai_only=await conversations.count_documents(
                {**started, "first_ai_at": {"$type": "string"}, "handoff_at": unset, "first_operator_at": unset}),
            handoffs=await conversations.count_documents({**started, "handoff_at": {"$type": "string"}}),
            answered_handoffs=answered, median_first_reply=median,
            ratings={doc["_id"]: doc["n"] async for doc in ratings},
            visitor_messages=sum(by_hour.values()), messages_by_hour=by_hour)

    # -- blocks -------------------------------------------------------------------------------
    @_guarded
    async def add_block(
        self, site_id: int, kind: str, value: str, expires_at: float | None, reason: str | None
    ) -> None:
        document: dict[str, Any] = {
            "_id": await self._next_id("blocks"), "site_id": _int(site_id), "kind": _str(kind),
            "value": _str(value), "expires_at": NEVER if expires_at is None else _num(expires_at),
            "reason": _opt_str(reason), "created_at": utc_now_iso()}
        if expires_at is not None:  # MongoDB removes it some time after it lapses
            document["expire_at"] = datetime.fromtimestamp(expires_at, timezone.utc)
        await self._db.blocks.insert_one(document)

    @_guarded
    async def remove_blocks(self, site_id: int, kind: str, value: str) -> int:
        result = await self._db.blocks.delete_many(
            {"site_id": _int(site_id), "kind": _str(kind), "value": _str(value)})
        return result.deleted_count

    @_guarded
    async def is_blocked(
        self, site_id: int, *, session_id: str, ip: str | None, email: str | None, now: float
    ) -> bool:
        candidates = [{"kind": "session", "value": _str(session_id)}]
        if ip:
            candidates.append({"kind": "ip", "value": _str(ip)})
        if email:
            candidates.append({"kind": "email", "value": _str(email).lower()})
        doc = await self._db.blocks.find_one(
            {"site_id": _int(site_id), "$or": candidates, "expires_at": {"$gt": _num(now)}},
            projection={"_id": 1})
        return doc is not None

    # -- proactive ----------------------------------------------------------------------------
    @_guarded
    async def add_proactive(
        self, site_id: int, session_id: str, content: str, sender: str, *,
        rule_key: str | None = None, deliver_at: float = 0.0,
    ) -> ProactiveMessage | None:
        site_id, session_id = _int(site_id), _str(session_id)
        document = {"site_id": site_id, "session_id": session_id, "content": _str(content),
                    "sender": _str(sender), "acked": False, "rule_key": _opt_str(rule_key),
                    "deliver_at": _num(deliver_at), "created_at": utc_now_iso()}
        try:
            stored = await self._ordered_insert(f"proactive:{site_id}:{session_id}", "proactive_messages",
                                                document)
        except DuplicateKeyError:
            return None  # this rule already spoke to this session
        return _proactive(stored)

    def _proactive_query(self, site_id: int, session_id: str, **extra: Any) -> dict[str, Any]:
        return {"site_id": _int(site_id), "session_id": _str(session_id), "acked": False, **extra}

    @_guarded
    async def pending_proactive(
        self, site_id: int, session_id: str, *, now: float, limit: int = 50
    ) -> list[ProactiveMessage]:
        cursor = self._db.proactive_messages.find(
            self._proactive_query(site_id, session_id, deliver_at={"$lte": _num(now)})
        ).sort("_id", ASCENDING).limit(_int(limit))
        return [_proactive(d) async for d in cursor]

    @_guarded
    async def next_proactive_due(self, site_id: int, session_id: str, *, now: float) -> float | None:
        doc = await self._db.proactive_messages.find_one(
            self._proactive_query(site_id, session_id, deliver_at={"$gt": _num(now)}),
            sort=[("deliver_at", ASCENDING)])
        return float(doc["deliver_at"]) if doc else None

    @_guarded
    async def ack_proactive(self, site_id: int, session_id: str, through_id: int, *, now: float) -> None:
        # A message not yet due was never delivered, whatever its id: it stays pending.
        await self._db.proactive_messages.update_many(
            self._proactive_query(site_id, session_id, _id={"$lte": _int(through_id)},
                                  deliver_at={"$lte": _num(now)}),
            {"$set": {"acked": True}})

    # -- knowledge ----------------------------------------------------------------------------
    async def _bump_version(self, site_id: int) -> None:
        await self._db.knowledge_versions.update_one({"_id": site_id}, {"$inc": {"version": 1}}, upsert=True)

    @_guarded
    async def add_document(
        self, site_id: int, title: str, url: str | None, content: str, *, file_name: str | None = None
    ) -> KnowledgeDocument:
        document = {"_id": await self._next_id("documents"), "site_id": _int(site_id), "title": _str(title),
                    "url": _opt_str(url), "content": _str(content), "updated_at": utc_now_iso(),
                    "file_name": _opt_str(file_name)}
        await self._db.documents.insert_one(document)
        await self._bump_version(site_id)
        return _document(document)

    @_guarded
    async def list_documents(self, site_id: int, limit: int = 10_000) -> list[KnowledgeDocument]:
        cursor = self._db.documents.find({"site_id": _int(site_id)}).sort("_id", ASCENDING).limit(_int(limit))
        return [_document(d) async for d in cursor]

    @_guarded
    async def remove_document(self, site_id: int, document_id: int) -> bool:
        result = await self._db.documents.delete_one({"_id": _int(document_id), "site_id": _int(site_id)})
        if result.deleted_count:
            await self._bump_version(site_id)
        return bool(result.deleted_count)

    @_guarded
    async def knowledge_version(self, site_id: int) -> str:
        doc = await self._db.knowledge_versions.find_one({"_id": _int(site_id)})
        return str(doc["version"] if doc else 0)

    # -- fetch jobs ---------------------------------------------------------------------------
    @_guarded
    async def add_fetch_job(self, site_id: int, url: str, origin: str, *, now: float,
                            keep: int = 20) -> FetchJob:
        document = {"_id": await self._next_id("fetch_jobs"), "site_id": _int(site_id), "url": _str(url),
                    "origin": _str(origin), "state": "fetching", "added": 0, "message": "", "done": 0,
                    "total": 0, "errors": [], "started_at": _num(now), "updated_at": _num(now)}
        await self._db.fetch_jobs.insert_one(document)
        older = self._db.fetch_jobs.find({"site_id": document["site_id"]}, {"_id": 1}).sort(
            "_id", DESCENDING).skip(max(_int(keep), 1)).limit(1)
        async for oldest_dropped in older:
            await self._db.fetch_jobs.delete_many(
                {"site_id": document["site_id"], "_id": {"$lte": oldest_dropped["_id"]}})
        return _fetch_job(document)

    @_guarded
    async def update_fetch_job(self, site_id: int, job_id: int, changes: dict[str, Any], *,
                               now: float) -> None:
        unknown = set(changes) - FETCH_JOB_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {**changes, "updated_at": _num(now)}
        if "errors" in values:
            values["errors"] = [_str(e) for e in values["errors"]]
        await self._db.fetch_jobs.update_one({"_id": _int(job_id), "site_id": _int(site_id)}, {"$set": values})

    @_guarded
    async def list_fetch_jobs(self, site_id: int, limit: int = 20) -> list[FetchJob]:
        cursor = self._db.fetch_jobs.find({"site_id": _int(site_id)}).sort("_id", DESCENDING).limit(_int(limit))
        return [_fetch_job(d) async for d in cursor]

    # -- answer claims ------------------------------------------------------------------------
    @staticmethod
    def _claim_key(conversation_id: int, message_id: str) -> str:
        return f"{_int(conversation_id)}:{_str(message_id)}"

    @_guarded
    async def claim_answer(self, conversation_id: int, message_id: str, origin: str, *,
                           now: float, stale_after: float) -> bool:
        key = self._claim_key(conversation_id, message_id)
        try:
            doc = await self._db.answer_claims.find_one_and_update(
                {"_id": key, "$or": [{"origin": _str(origin)}, {"claimed_at": {"$lt": _num(now) - stale_after}}]},
                {"$set": {"origin": origin, "claimed_at": now, "expire_at": _utc(RETAIN_CLAIMS.total_seconds())}},
                upsert=True, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:  # another process holds a fresh claim
            return False
        return doc is not None and doc.get("origin") == origin

    @_guarded
    async def release_answer(self, conversation_id: int, message_id: str, origin: str) -> None:
        await self._db.answer_claims.delete_one(
            {"_id": self._claim_key(conversation_id, message_id), "origin": _str(origin)})

    @_guarded
    async def follow_answer(self, conversation_id: int, message_id: str, *, now: float) -> None:
        await self._db.answer_claims.update_one({"_id": self._claim_key(conversation_id, message_id)},
                                                {"$set": {"followed_at": _num(now)}})

    @_guarded
    async def followed_answers(self, claims: list[tuple[int, str]], *, since: float) -> list[bool]:
        keys = [self._claim_key(conversation_id, message_id) for conversation_id, message_id in claims]
        cursor = self._db.answer_claims.find({"_id": {"$in": keys}, "followed_at": {"$gte": _num(since)}},
                                             projection={"_id": 1})
        followed = {doc["_id"] async for doc in cursor}
        return [key in followed for key in keys]

    # -- events -------------------------------------------------------------------------------
    @_guarded
    async def record_event(self, topic: str, kind: str, payload: dict[str, Any], origin: str) -> int:
        return (await self.record_events([(topic, kind, payload)], origin))[0]

    @_guarded
    async def record_events(self, events: list[tuple[str, str, dict[str, Any]]], origin: str) -> list[int]:
        if not events:
            return []
        # One counter step for all of them, one insert: two round trips however many topics.
        first = await self._next_id("events", len(events)) - len(events) + 1
        now, expire_at = time.time(), _utc(RETAIN_EVENTS.total_seconds())
        documents = [{"_id": first + n, "topic": _str(topic), "kind": _str(kind), "payload": dict(payload),
                      "origin": _str(origin), "created_at": now, "expire_at": expire_at}
                     for n, (topic, kind, payload) in enumerate(events)]
        await self._db.events.insert_many(documents, ordered=True)
        return [d["_id"] for d in documents]

    @_guarded
    async def latest_event_id(self) -> int:
        doc = await self._db.events.find_one({}, sort=[("_id", DESCENDING)], projection={"_id": 1})
        return int(doc["_id"]) if doc else 0

    @_guarded
    async def events_since(self, after: int, *, exclude_origin: str, limit: int) -> list[Event]:
        cursor = self._db.events.find(
            {"_id": {"$gt": _int(after)}, "origin": {"$ne": _str(exclude_origin)}}
        ).sort("_id", ASCENDING).limit(_int(limit))
        return [_event(d) async for d in cursor]

    @_guarded
    async def events_by_id(self, ids: list[int]) -> list[Event]:
        wanted = [_int(i) for i in ids[:1000]]
        if not wanted:
            return []
        cursor = self._db.events.find({"_id": {"$in": wanted}}).sort("_id", ASCENDING)
        return [_event(d) async for d in cursor]

    # -- privacy ------------------------------------------------------------------------------
    @_guarded
    async def erase_conversation(self, site_id: int, session_id: str, *, compact: bool = True) -> list[str]:
        site, session = _int(site_id), _str(session_id)
        conversation = await self._db.conversations.find_one(
            {"site_id": site, "session_id": session}, projection={"_id": 1})
        keys: list[str] = []
        event_filter: list[dict[str, Any]] = [{"topic": f"session:{site}:{session}"},
                                              {"payload.session_id": session}]
        if conversation is not None:
            cid = conversation["_id"]
            message_ids: list[str] = []
            async for doc in self._db.messages.find(
                    {"conversation_id": cid}, projection={"image_key": 1, "message_id": 1}):
                if doc.get("image_key"):
                    keys.append(doc["image_key"])
                if doc.get("message_id"):
                    message_ids.append(doc["message_id"])
            await self._db.messages.delete_many({"conversation_id": cid})
            await self._db.notes.delete_many({"conversation_id": cid})
            if message_ids:
                await self._db.answer_claims.delete_many(
                    {"_id": {"$in": [self._claim_key(cid, m) for m in message_ids]}})
            await self._db.conversations.delete_one({"_id": cid})
            event_filter.append({"payload.conversation_id": cid})
        await self._db.proactive_messages.delete_many({"site_id": site, "session_id": session})
        await self._db.blocks.delete_many({"site_id": site, "value": session})
        await self._db.events.delete_many({"$or": event_filter})
        return keys

    @_guarded
    async def list_contacts(self, site_id: int, *, rated: bool = False, search: str | None = None,
                            limit: int = 500) -> list[Conversation]:
        fields = ("email", "phone", "contact_name")
        query: dict[str, Any] = {"site_id": _int(site_id)}
        if rated:
            query["rating"] = {"$type": "number"}
        else:
            query["$or"] = [{f: {"$type": "string"}} for f in fields]
        cursor = self._db.conversations.find(query).sort("updated_at", DESCENDING).limit(
            _int(limit) if not search else 10_000)
        needle = _str(search).lower() if search else None
        found: list[Conversation] = []
        async for doc in cursor:  # substring search in Python: the stand-in has no $regex options
            if needle and not any(needle in (doc.get(f) or "").lower() for f in fields):
                continue
            found.append(_conversation(doc))
            if len(found) >= limit:
                break
        return found

    @_guarded
    async def stale_sessions(self, site_id: int, *, updated_before: str, limit: int = 500) -> list[str]:
        cursor = self._db.conversations.find(
            {"site_id": _int(site_id), "updated_at": {"$lt": _str(updated_before)}},
            projection={"session_id": 1}).sort("updated_at", ASCENDING).limit(_int(limit))
        return [doc["session_id"] async for doc in cursor]

    @_guarded
    async def prune_events(self, older_than: float) -> int:
        result = await self._db.events.delete_many({"created_at": {"$lt": _num(older_than)}})
        return result.deleted_count

    @_guarded
    async def oldest_event_id(self) -> int:
        doc = await self._db.events.find_one({}, sort=[("_id", ASCENDING)], projection={"_id": 1})
        return int(doc["_id"]) if doc else 0

    @_guarded
    async def events_for_topics(self, after: int, topics: tuple[str, ...], *,
                                limit: int) -> list[Event]:
        if not topics:
            return []
        cursor = self._db.events.find(
            {"_id": {"$gt": _int(after)}, "topic": {"$in": [_str(t) for t in topics]}}
        ).sort("_id", ASCENDING).limit(_int(limit))
        return [_event(d) async for d in cursor]

    async def watch_events(self, *, exclude_origin: str, resume_after: Any = None) -> MongoEventStream | None:
        """A change stream of events other processes record; None when the server has none (a
        standalone server rather than a replica set)."""
        if self._db is None:
            raise StoreUnavailable("The store is not open.")
        pipeline = [{"$match": {"operationType": "insert", "fullDocument.origin": {"$ne": _str(exclude_origin)}}}]
        try:
            stream = await self._db.events.watch(pipeline, resume_after=resume_after, max_await_time_ms=500)
        except OperationFailure as exc:
            if exc.code in NO_CHANGE_STREAMS or "replica set" in str(exc).lower():
                return None
            raise StoreUnavailable(f"cannot open a change stream: {exc}") from exc
        except PyMongoError as exc:
            raise StoreUnavailable(f"cannot open a change stream: {exc}") from exc
        return MongoEventStream(stream)

    # -- operators ----------------------------------------------------------------------------
    @staticmethod
    def _operator(doc: dict[str, Any]) -> Operator:
        return Operator(
            id=doc["_id"], email=doc["email"], name=doc["name"], role=doc["role"],
            password_hash=doc["password_hash"], disabled=bool(doc.get("disabled")),
            created_at=doc["created_at"], site_ids=tuple(sorted(doc.get("site_ids") or [])),
            totp_secret=doc.get("totp_secret"), recovery_codes=tuple(doc.get("recovery_codes") or []),
            prefs=dict(doc.get("prefs") or {}))

    @_guarded
    async def create_operator(self, email: str, name: str, role: str, password_hash: str,
                              site_ids: Iterable[int] = ()) -> Operator:
        document = {"_id": await self._next_id("operators"), "email": _str(email), "name": _str(name),
                    "role": _str(role), "password_hash": _str(password_hash), "disabled": False,
                    "site_ids": sorted({_int(i) for i in site_ids}), "totp_secret": None,
                    "recovery_codes": [], "prefs": {}, "created_at": utc_now_iso()}
        try:
            await self._db.operators.insert_one(document)
        except DuplicateKeyError as exc:
            raise DuplicateOperator(email) from exc
        return self._operator(document)

    @_guarded
    async def get_operator(self, operator_id: int) -> Operator | None:
        doc = await self._db.operators.find_one({"_id": _int(operator_id)})
        return self._operator(doc) if doc else None

    @_guarded
    async def get_operator_by_email(self, email: str) -> Operator | None:
        doc = await self._db.operators.find_one({"email": _str(email)})
        return self._operator(doc) if doc else None

    @_guarded
    async def list_operators(self, limit: int = 1000) -> list[Operator]:
        cursor = self._db.operators.find({}).sort("_id", ASCENDING).limit(_int(limit))
        return [self._operator(d) async for d in cursor]

    @_guarded
    async def count_operators(self) -> int:
        return await self._db.operators.count_documents({})

    @_guarded
    async def update_operator(self, operator_id: int, changes: dict[str, Any]) -> None:
        unknown = set(changes) - OPERATOR_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            update = {k: list(v) if k == "recovery_codes" else v for k, v in changes.items()}
            await self._db.operators.update_one({"_id": _int(operator_id)}, {"$set": update})

    @_guarded
    async def set_operator_sites(self, operator_id: int, site_ids: Iterable[int]) -> None:
        await self._db.operators.update_one(
            {"_id": _int(operator_id)}, {"$set": {"site_ids": sorted({_int(i) for i in site_ids})}})

    # -- operator sessions, failures, setup tokens --------------------------------------------
    @_guarded
    async def create_operator_session(self, session: OperatorSession) -> None:
        await self._db.operator_sessions.insert_one({
            "_id": _str(session.token_hash), "operator_id": _int(session.operator_id),
            "created_at": session.created_at, "last_seen": session.last_seen, "ip": session.ip,
            "user_agent": session.user_agent, "second_factor_done": session.second_factor_done})

    @_guarded
    async def get_operator_session(self, token_hash: str) -> OperatorSession | None:
        doc = await self._db.operator_sessions.find_one({"_id": _str(token_hash)})
        if doc is None:
            return None
        return OperatorSession(token_hash=doc["_id"], operator_id=doc["operator_id"],
                               created_at=doc["created_at"], last_seen=doc["last_seen"],
                               ip=doc.get("ip"), user_agent=doc.get("user_agent"),
                               second_factor_done=bool(doc.get("second_factor_done", True)),
                               present_at=doc.get("present_at"))

    @_guarded
    async def touch_operator_session(self, token_hash: str, now: float,
                                     second_factor_done: bool | None = None) -> None:
        update: dict[str, Any] = {"last_seen": _num(now)}
        if second_factor_done is not None:
            update["second_factor_done"] = bool(second_factor_done)
        await self._db.operator_sessions.update_one({"_id": _str(token_hash)}, {"$set": update})

    @_guarded
    async def mark_operator_present(self, token_hash: str, now: float) -> None:
        await self._db.operator_sessions.update_one({"_id": _str(token_hash)},
                                                    {"$set": {"present_at": _num(now)}})

    @_guarded
    async def operators_present(self, *, since: float, site_id: int | None = None,
                                limit: int = 1000) -> list[int]:
        since = _num(since)
        cursor = self._db.operator_sessions.find(
            {"second_factor_done": True,
             "$or": [{"last_seen": {"$gte": since}}, {"present_at": {"$gte": since}}]},
            {"operator_id": 1}).limit(10 * _int(limit))
        present = sorted({doc["operator_id"] async for doc in cursor})
        if site_id is not None and present:
            answering = self._db.operators.find(
                {"_id": {"$in": present}, "disabled": {"$ne": True},
                 "$or": [{"role": "admin"}, {"site_ids": _int(site_id)}]}, {"_id": 1})
            present = sorted([doc["_id"] async for doc in answering])
        return present[:limit]

    @_guarded
    async def delete_operator_sessions(self, *, operator_id: int | None = None,
                                       token_hash: str | None = None,
                                       idle_before: float | None = None) -> int:
        query: dict[str, Any] = {}
        if operator_id is not None:
            query["operator_id"] = _int(operator_id)
        if token_hash is not None:
            query["_id"] = _str(token_hash)
        if idle_before is not None:
            query["last_seen"] = {"$lt": _num(idle_before)}
        if not query:
            raise ValueError("say which sessions to delete")
        return (await self._db.operator_sessions.delete_many(query)).deleted_count

    @_guarded
    async def record_login_failure(self, keys: Iterable[str], now: float) -> None:
        documents = [{"_id": await self._next_id("login_failures"), "key": _str(key), "at": _num(now),
                      "expire_at": _utc(86400)} for key in keys]
        if documents:
            await self._db.login_failures.insert_many(documents)

    @_guarded
    async def count_login_failures(self, key: str, since: float) -> int:
        return await self._db.login_failures.count_documents({"key": _str(key), "at": {"$gte": _num(since)}})

    @_guarded
    async def clear_login_failures(self, key: str, *, before: float | None = None) -> None:
        query: dict[str, Any] = {"key": _str(key)}
        if before is not None:
            query["at"] = {"$lt": _num(before)}
        await self._db.login_failures.delete_many(query)

    @_guarded
    async def prune_login_failures(self, before: float) -> int:
        return (await self._db.login_failures.delete_many({"at": {"$lt": _num(before)}})).deleted_count

    @_guarded
    async def add_setup_token(self, token_hash: str, expires_at: float) -> None:
        await self._db.setup_tokens.insert_one({"_id": _str(token_hash), "expires_at": _num(expires_at),
                                                "used": False})

    @_guarded
    async def use_setup_token(self, token_hash: str, now: float, *, consume: bool = True) -> bool:
        query = {"_id": _str(token_hash), "used": False, "expires_at": {"$gt": _num(now)}}
        if not consume:
            return await self._db.setup_tokens.find_one(query) is not None
        result = await self._db.setup_tokens.update_one(query, {"$set": {"used": True}})
        return result.modified_count == 1

    # -- audit log ----------------------------------------------------------------------------
    @_guarded
    async def add_audit(self, *, operator_id: int | None, operator_email: str | None, action: str,
                        site_id: int | None, target: str | None, detail: dict[str, Any],
                        ip: str | None) -> None:
        await self._db.audit_log.insert_one({
            "_id": await self._next_id("audit_log"), "created_at": utc_now_iso(),
            "operator_id": operator_id, "operator_email": operator_email, "action": _str(action),
            "site_id": site_id, "target": target, "detail": dict(detail), "ip": ip})

    @_guarded
    async def list_audit(self, *, limit: int = 200, before: int | None = None) -> list[AuditEntry]:
        cursor = self._db.audit_log.find({"_id": {"$lt": _int(before or 2**62)}}).sort(
            "_id", DESCENDING).limit(_int(limit))
        return [AuditEntry(id=d["_id"], created_at=d["created_at"], operator_id=d.get("operator_id"),
                           operator_email=d.get("operator_email"), action=d["action"],
                           site_id=d.get("site_id"), target=d.get("target"),
                           detail=dict(d.get("detail") or {}), ip=d.get("ip")) async for d in cursor]

    # -- the dashboard's reads ----------------------------------------------------------------
    @_guarded
    async def get_conversation_by_id(self, conversation_id: int) -> Conversation | None:
        doc = await self._db.conversations.find_one({"_id": _int(conversation_id)})
        return _conversation(doc) if doc else None

    SEARCH_CONVERSATIONS = 2000  # most conversations a search narrows the inbox to

    @_guarded
    async def list_inbox(self, site_ids: Iterable[int], *, status: str = "all",
                         operator_id: int | None = None, search: str | None = None,
                         limit: int = 50, before: tuple[str, int] | None = None,
                         visitor: str | None = None) -> list[InboxEntry]:
        sites = sorted({_int(i) for i in site_ids})
        if not sites:
            return []
        query: dict[str, Any] = {"site_id": {"$in": sites}, "has_messages": True,
                                 "closed": {"$ne": True}}
        if status == "closed":
            query["closed"] = True
        elif status == "handoff":
            query["handoff"] = True
        elif status == "mine":
            query["assignee_id"] = operator_id
        elif status == "unassigned":
            query["assignee_id"] = None
        elif status in ("operator", "ai"):
            query["mode"] = status
        alternatives = []  # each a list of conditions one of which must hold
        if before:
            before_at, before_id = _str(before[0]), _int(before[1])
            alternatives.append([{"updated_at": {"$lt": before_at}},
                                 {"updated_at": before_at, "_id": {"$lt": before_id}}])
        if visitor:
            alternatives.append([{"email": {"$regex": f"^{re.escape(_str(visitor))}$", "$options": "i"}},
                                 {"session_id": _str(visitor)}])
        if alternatives:
            query["$and"] = [{"$or": conditions} for conditions in alternatives]
        words = re.findall(r"\w+", _folded(_str(search or "")))[:10]
        if words:
            # As SQLite's full-text search matches: every word the start of a word of one message,
            # whatever its case and accents. Each word is escaped: a pattern, never a query.
            patterns = [{"search_text": {"$regex": rf"\b{re.escape(w)}"}} for w in words]
            found = self._db.messages.find({"site_id": {"$in": sites}, "$and": patterns},
                                           projection={"conversation_id": 1}).limit(self.SEARCH_CONVERSATIONS)
            query["_id"] = {"$in": list({d["conversation_id"] async for d in found})}
        cursor = self._db.conversations.find(query).sort([("updated_at", DESCENDING), ("_id", DESCENDING)]
                                                         ).limit(_int(limit))
        conversations = [_conversation(doc) async for doc in cursor]
        if not conversations:
            return []
        # Each row's last message and unread count: two queries for the page, not two a row.
        lasts = await self._db.messages.aggregate([
            {"$match": {"conversation_id": {"$in": [c.id for c in conversations]}}},
            {"$sort": {"_id": DESCENDING}},
            {"$group": {"_id": "$conversation_id", "last": {"$first": "$$ROOT"}}}])
        last_of = {doc["_id"]: _message(doc["last"]) async for doc in lasts}
        unread = await self._db.messages.aggregate([  # role in each branch: the stand-in drops fields beside $or
            {"$match": {"$or": [{"conversation_id": c.id, "_id": {"$gt": c.read_through}, "role": "visitor"}
                                for c in conversations]}},
            {"$group": {"_id": "$conversation_id", "n": {"$sum": 1}}}])
        unread_of = {doc["_id"]: doc["n"] async for doc in unread}
        return [InboxEntry(c, last_of.get(c.id), unread_of.get(c.id, 0)) for c in conversations]

    @_guarded
    async def visitors_online(self, site_ids: Iterable[int], *, since: float,
                              limit: int = 200) -> list[Conversation]:
        cursor = self._db.conversations.find(
            {"site_id": {"$in": sorted({_int(i) for i in site_ids})}, "last_seen_at": {"$gte": _num(since)}}
        ).sort("last_seen_at", DESCENDING).limit(_int(limit))
        return [_conversation(d) async for d in cursor]

    @_guarded
    async def add_note(self, conversation_id: int, operator_id: int | None, author: str,
                       content: str) -> Note:
        document = {"_id": await self._next_id("notes"), "conversation_id": _int(conversation_id),
                    "operator_id": operator_id, "author": _str(author), "content": _str(content),
                    "created_at": utc_now_iso()}
        await self._db.notes.insert_one(document)
        return Note(id=document["_id"], conversation_id=document["conversation_id"],
                    operator_id=operator_id, author=author, content=content,
                    created_at=document["created_at"])

    @_guarded
    async def list_notes(self, conversation_id: int, limit: int = 500) -> list[Note]:
        cursor = self._db.notes.find({"conversation_id": _int(conversation_id)}).sort(
            "_id", ASCENDING).limit(_int(limit))
        return [Note(id=d["_id"], conversation_id=d["conversation_id"], operator_id=d.get("operator_id"),
                     author=d["author"], content=d["content"], created_at=d["created_at"])
                async for d in cursor]

    @_guarded
    async def list_blocks(self, site_id: int, *, now: float, limit: int = 500) -> list[dict[str, Any]]:
        cursor = self._db.blocks.find({"site_id": _int(site_id), "expires_at": {"$gt": _num(now)}}).sort(
            "_id", DESCENDING).limit(_int(limit))
        return [{"kind": d["kind"], "value": d["value"], "reason": d.get("reason"),
                 "expires_at": None if d["expires_at"] >= NEVER else d["expires_at"]} async for d in cursor]

    @_guarded
    async def list_canned_replies(self, site_id: int, limit: int = 500) -> list[CannedReply]:
        cursor = self._db.canned_replies.find({"site_id": _int(site_id)}).sort(
            "shortcut", ASCENDING).limit(_int(limit))
        return [CannedReply(id=d["_id"], site_id=d["site_id"], shortcut=d["shortcut"],
                            content=d["content"]) async for d in cursor]

    @_guarded
    async def save_canned_reply(self, site_id: int, shortcut: str, content: str) -> CannedReply:
        key = {"site_id": _int(site_id), "shortcut": _str(shortcut)}
        doc = await self._db.canned_replies.find_one(key)
        if doc is None:
            try:
                await self._db.canned_replies.insert_one(
                    {"_id": await self._next_id("canned_replies"), **key, "content": _str(content)})
            except DuplicateKeyError:
                pass  # saved at the same moment elsewhere: the update below wins
        await self._db.canned_replies.update_one(key, {"$set": {"content": _str(content)}})
        doc = await self._db.canned_replies.find_one(key)
        if doc is None:
            raise StoreUnavailable("the canned reply was not stored")
        return CannedReply(id=doc["_id"], site_id=doc["site_id"], shortcut=doc["shortcut"],
                           content=doc["content"])

    @_guarded
    async def remove_canned_reply(self, site_id: int, reply_id: int) -> bool:
        result = await self._db.canned_replies.delete_one({"_id": _int(reply_id), "site_id": _int(site_id)})
        return bool(result.deleted_count)
