"""The storage interface. Services talk only to this; SQLite and MongoDB implement it."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from typing import Any, Callable, Iterable

from server.errors import Unavailable
from server.store.models import (
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
    SiteActivity,
    Source,
)


class StoreUnavailable(Unavailable):
    """The database cannot be reached or refused the operation; nothing was half-written."""


class DuplicateOperator(Exception):
    """An operator with this email already exists."""


class DuplicateMessageId(Exception):
    """A visitor message with this message_id already exists in the conversation."""


Events = list[tuple[str, str, dict[str, Any]]]


async def _none() -> None:
    return None


def check_presence(changes: dict[str, Any]) -> None:
    """Raises unless `changes` are presence only (see Store.write_presence)."""
    other = set(changes) - QUIET_CONVERSATION_FIELDS
    if other:
        raise ValueError(f"not presence: {sorted(other)}")


@dataclasses.dataclass(frozen=True)
class TakenQuestion:
    """What Store.take_question did. `message` is None when the visitor is blocked (nothing was
    written) or when the message_id was used before in the conversation (a retry)."""

    conversation: Conversation | None  # with `changes` applied; None only when blocked
    message: Message | None
    blocked: bool = False
    claimed: bool = False
    history: list[Message] = dataclasses.field(default_factory=list)  # before the message, oldest first
    # Read for the answer's checks with the message (see take_question's `replies_since`).
    ai_replies: int | None = None
    knowledge_version: str | None = None


class Store(abc.ABC):
    """Every method is a coroutine and either completes its write or raises StoreUnavailable.

    The rules every backend keeps (tests/store_conformance.py checks them on each):

    - Ids are integers, unique per kind of record, and increase in commit order within what a
      cursor reads: a message committed after another in the same conversation has the larger id,
      so `list_messages(after=...)` never skips a row; the same holds for one session's proactive
      messages (acknowledged "up to an id"). Events may commit out of id order across processes;
      their readers (server/feed.py) look again for ids skipped over.
    - A record is written whole or not at all; a failed call leaves nothing half-written.
    - Values are plain: a method taking a str takes only a str (a dict such as {"$gt": ""} raises
      TypeError before it reaches the database); no query is built from unchecked input.
    - After creation a conversation changes only in the fields of CONVERSATION_UPDATABLE (and its
      updated_at); a message never changes; a site changes only in its settings.
    - Every call is bounded in time: a database that does not answer raises StoreUnavailable,
      and the store recovers by itself when the database is back.
    - Nothing leaks across sites or sessions: every lookup is keyed by the site (and session).
    """

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the database cannot answer."""

    # Sites
    @abc.abstractmethod
    async def create_site(
        self, site_key: str, name: str, allowed_origins: list[str], settings: dict[str, Any]
    ) -> Site: ...

    @abc.abstractmethod
    async def get_site_by_key(self, site_key: str) -> Site | None: ...

    @abc.abstractmethod
    async def list_sites(self, limit: int = 1000) -> list[Site]: ...

    @abc.abstractmethod
    async def update_site_settings(self, site_id: int, changes: dict[str, Any]) -> Site:
        """Set the given top-level settings atomically, keeping every other key as stored."""

    @abc.abstractmethod
    async def update_site(self, site_id: int, *, name: str | None = None,
                          allowed_origins: list[str] | None = None, site_key: str | None = None) -> Site:
        """Rename a site, replace its origins or give it a new key (the old one stops working)."""

    # Conversations (one per visitor session)
    @abc.abstractmethod
    async def get_conversation(self, site_id: int, session_id: str) -> Conversation | None: ...

    @abc.abstractmethod
    async def ensure_conversation(
        self, site_id: int, session_id: str, context: dict[str, Any]
    ) -> Conversation:
        """Return the session's conversation, creating it (mode 'ai') with `context` if missing."""

    @abc.abstractmethod
    async def update_conversation(self, conversation_id: int, changes: dict[str, Any]) -> None: ...

    async def write_presence(self, changes: dict[int, dict[str, Any]], *, events: Events,
                             origin: str) -> None:
        """Many conversations' presence (QUIET_CONVERSATION_FIELDS only: when last seen, page,
        browser) and the events telling of arrivals; in one transaction where the store can."""
        for conversation_id, change in changes.items():
            check_presence(change)
            await self.update_conversation(conversation_id, change)
        if events:
            await self.record_events(events, origin)

    # Messages
    @abc.abstractmethod
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
        """Raise DuplicateMessageId when a visitor message_id is reused in the conversation."""

    async def add_question(
        self, conversation_id: int, content: str, *, message_id: str,
        events: Callable[[Message], Events], origin: str,
        claim: bool, now: float, stale_after: float,
    ) -> tuple[Message, bool]:
        """A visitor's message, the events telling every process of it (`events(message)`,
        recorded for `origin`) and, when `claim`, `origin`'s claim on answering it. One
        transaction where the store can: this is what a visitor waits on before the first token.
        Returns the message and whether the claim is held. DuplicateMessageId as add_message."""
        message = await self.add_message(conversation_id, "visitor", content, message_id=message_id)
        await self._record_events_of_stored_write(events(message), origin)
        claimed = claim and await self.claim_answer(conversation_id, message_id, origin, now=now,
                                                    stale_after=stale_after)
        return message, claimed

    async def take_question(
        self, site_id: int, session_id: str, content: str, *, message_id: str,
        context: dict[str, Any], changes: Callable[[Conversation], dict[str, Any]], ip: str | None,
        events: Callable[[Conversation, Message], Events], origin: str, now: float,
        stale_after: float, history: int, replies_since: str | None = None,
    ) -> TakenQuestion:
        """Everything the store does for a visitor's question before its answer starts:
        1. the session's conversation, made with `context` if missing (as ensure_conversation);
        2. refused when a block matches the session, `ip` or the conversation's email (as
           is_blocked), and then nothing at all is written, not even a new conversation;
        3. `changes(conversation)` applied to it (fields of CONVERSATION_UPDATABLE);
        4. unless the message_id was used before in the conversation: the newest `history`
           messages, the visitor's message, the events telling of it (`events(conversation as it
           was before the changes, message)`, recorded for `origin`) and `origin`'s claim on
           answering it, except in operator mode;
        5. with a stored message, what the answer checks before it starts: the site's
           knowledge_version and, given `replies_since`, the session's AI replies since then (as
           count_messages(role="ai", session_id=...) counts them). Read here, the answer waits on
           no read of its own.
        One transaction where the store can: this is what a visitor waits on before the first
        token. The caller delivers the events locally. `changes` and `events` may be called more
        than once (SQLite runs a write again when another in its group commit failed); what they
        returned last is what was stored."""
        found = await self.get_conversation(site_id, session_id)
        if await self.is_blocked(site_id, session_id=session_id, ip=ip,
                                 email=found.email if found else None, now=now):
            return TakenQuestion(found, None, blocked=True)
        conversation = found or await self.ensure_conversation(site_id, session_id, context)
        updates = changes(conversation)
        await self.update_conversation(conversation.id, updates)
        changed = dataclasses.replace(conversation, **updates)
        earlier = await self.recent_messages(conversation.id, history) if history > 0 else []
        try:
            message, claimed = await self.add_question(
                conversation.id, content, message_id=message_id,
                events=lambda message: events(conversation, message), origin=origin,
                claim=conversation.mode != "operator", now=now, stale_after=stale_after)
        except DuplicateMessageId:
            return TakenQuestion(changed, None)
        replies, version = await asyncio.gather(
            self.count_messages(site_id, since=replies_since, role="ai", session_id=session_id)
            if replies_since is not None else _none(),
            self.knowledge_version(site_id))
        return TakenQuestion(changed, message, claimed=claimed, history=earlier, ai_replies=replies,
                             knowledge_version=version)

    async def add_operator_message(
        self, site_id: int, session_id: str, content: str, *, operator_name: str,
        events: Callable[[Message], Events], origin: str,
        following: Callable[[int, str], None] | None = None,
    ) -> Message:
        """An operator's message to a visitor: the session's conversation (made if missing, as
        ensure_conversation makes it), the message, and the events telling every process of it
        (`events(message)`, recorded for `origin`). One transaction where the store can: this is
        what each operator reply costs the store. The caller then delivers the events locally.
        `events` may be called more than once (SQLite runs a write again when another in its
        group commit failed): the message it was last given is the one stored.

        `following(previous, mode)`, where the store can tell: the id of the conversation's
        operator message before this one (0 for none) and the conversation's mode, as of the
        write, when every message with a smaller id is committed by then (SQLite: ids are taken
        under the write lock). A reader whose cursor is at or past `previous` would read exactly
        this message. Stores that cannot tell never call it; it too may be called more than once."""
        conversation = await self.ensure_conversation(site_id, session_id, {})
        message = await self.add_message(conversation.id, "operator", content,
                                         operator_name=operator_name)
        await self._record_events_of_stored_write(events(message), origin)
        return message

    async def _record_events_of_stored_write(self, events: Events, origin: str) -> None:
        """Record the events of a write already stored. If they cannot be, the write still
        stands: other processes see it on their next read."""
        try:
            await self.record_events(events, origin)
        except StoreUnavailable:
            pass

    @abc.abstractmethod
    async def count_messages(
        self, site_id: int, *, since: str, role: str | None = None, session_id: str | None = None
    ) -> int:
        """Messages of the site (or of one session) created at or after `since` (ISO 8601 UTC)."""

    @abc.abstractmethod
    async def get_visitor_message(self, conversation_id: int, message_id: str) -> Message | None: ...

    @abc.abstractmethod
    async def get_reply(self, conversation_id: int, message_id: str) -> Message | None:
        """The latest AI answer to the visitor message with this message_id, if stored."""

    @abc.abstractmethod
    async def list_messages(
        self,
        conversation_id: int,
        *,
        after: int | None = None,
        limit: int = 50,
        roles: tuple[str, ...] | None = None,
    ) -> list[Message]:
        """Oldest first, ids greater than `after`."""

    @abc.abstractmethod
    async def first_visitor_messages(self, conversation_ids: list[int]) -> dict[int, str]:
        """Each conversation's first visitor message, by conversation id (those with none left
        out): the contacts page's "message" column, in one read."""

    async def conversation_messages(
        self, site_id: int, session_id: str, *, after: int | None = None, limit: int = 50,
        roles: tuple[str, ...] | None = None,
    ) -> tuple[Conversation | None, list[Message]]:
        """The session's conversation (None if it has none) and its messages as list_messages
        gives them: a visitor's held read, in one call (one read where the store can)."""
        conversation = await self.get_conversation(site_id, session_id)
        if conversation is None:
            return None, []
        return conversation, await self.list_messages(conversation.id, after=after, limit=limit,
                                                       roles=roles)

    @abc.abstractmethod
    async def recent_messages(self, conversation_id: int, limit: int) -> list[Message]:
        """The newest `limit` messages, oldest first."""

    @abc.abstractmethod
    async def knowledge_gaps(self, site_id: int, *, below: float, limit: int = 50) -> list[KnowledgeGap]:
        """The newest visitor questions whose AI answer had a relevance under `below`."""

    @abc.abstractmethod
    async def handoff_questions(self, site_id: int, *, limit: int = 50) -> list[KnowledgeGap]:
        """The question that ended each of the newest handed-off conversations (the visitor's last
        message before the first handoff), with its AI answer's relevance if it had one."""

    @abc.abstractmethod
    async def site_activity(self, site_id: int, *, since: str, until: str) -> SiteActivity:
        """The site's numbers over [since, until) (ISO 8601 UTC), aggregated by the database: the
        only rows returned are one per rating score and one per hour with visitor messages."""

    # Privacy: one visitor's erasure, and the retention job's list
    @abc.abstractmethod
    async def erase_conversation(self, site_id: int, session_id: str, *, compact: bool = True) -> list[str]:
        """Delete everything stored about one visitor session: the conversation, its messages (and
        their search index), notes, proactive messages, blocks of the session, answer claims and
        every event naming it; return the keys of its uploads, for the caller to delete. Nothing
        of it may stay readable in the database's files afterwards (free pages, the log) once a
        call with `compact` has run (a batch passes False to all but its last)."""

    @abc.abstractmethod
    async def stale_sessions(self, site_id: int, *, updated_before: str, limit: int = 500) -> list[str]:
        """Session ids of the site's conversations with no activity since `updated_before` (ISO)."""

    @abc.abstractmethod
    async def list_contacts(self, site_id: int, *, rated: bool = False, search: str | None = None,
                            limit: int = 500) -> list[Conversation]:
        """Conversations that left an email, phone or name (or, with `rated`, a rating), newest
        activity first; `search` is a case-insensitive substring of the email, name or phone."""

    # Blocks
    @abc.abstractmethod
    async def add_block(
        self, site_id: int, kind: str, value: str, expires_at: float | None, reason: str | None
    ) -> None: ...

    @abc.abstractmethod
    async def remove_blocks(self, site_id: int, kind: str, value: str) -> int: ...

    @abc.abstractmethod
    async def is_blocked(
        self, site_id: int, *, session_id: str, ip: str | None, email: str | None, now: float
    ) -> bool: ...

    # Proactive messages
    @abc.abstractmethod
    async def add_proactive(
        self, site_id: int, session_id: str, content: str, sender: str, *,
        rule_key: str | None = None, deliver_at: float = 0.0,
    ) -> ProactiveMessage | None:
        """Queue a message, visible from `deliver_at` (epoch seconds). With a `rule_key`, at most
        once per session: None when that rule already produced a message for it."""

    @abc.abstractmethod
    async def pending_proactive(
        self, site_id: int, session_id: str, *, now: float, limit: int = 50
    ) -> list[ProactiveMessage]:
        """Unacknowledged messages already due at `now`, oldest first."""

    @abc.abstractmethod
    async def next_proactive_due(self, site_id: int, session_id: str, *, now: float) -> float | None:
        """When the next not-yet-due message becomes due, if any."""

    @abc.abstractmethod
    async def ack_proactive(self, site_id: int, session_id: str, through_id: int, *, now: float) -> None:
        """Acknowledge the delivered messages (due by `now`) up to `through_id`."""

    # Knowledge
    @abc.abstractmethod
    async def add_document(
        self, site_id: int, title: str, url: str | None, content: str, *, file_name: str | None = None
    ) -> KnowledgeDocument: ...

    @abc.abstractmethod
    async def list_documents(self, site_id: int, limit: int = 10_000) -> list[KnowledgeDocument]: ...

    @abc.abstractmethod
    async def remove_document(self, site_id: int, document_id: int) -> bool: ...

    @abc.abstractmethod
    async def knowledge_version(self, site_id: int) -> str:
        """Changes whenever the site's documents change; the index cache keys on it."""

    # Answer claims: which process is answering a visitor message right now
    # Background fetches into a site's knowledge: written by the process that runs them, read by any.
    @abc.abstractmethod
    async def add_fetch_job(self, site_id: int, url: str, origin: str, *, now: float,
                            keep: int = 20) -> FetchJob:
        """Record a fetch that begins (state "fetching"); the site keeps only its `keep` newest."""

    @abc.abstractmethod
    async def update_fetch_job(self, site_id: int, job_id: int, changes: dict[str, Any], *,
                               now: float) -> None:
        """Write fields of FETCH_JOB_UPDATABLE and set updated_at to `now` (the heartbeat)."""

    @abc.abstractmethod
    async def list_fetch_jobs(self, site_id: int, limit: int = 20) -> list[FetchJob]:
        """The site's fetches, newest first."""

    @abc.abstractmethod
    async def claim_answer(self, conversation_id: int, message_id: str, origin: str, *,
                           now: float, stale_after: float) -> bool:
        """Claim the answer to a visitor message for `origin` (a process). False while another
        process holds a claim younger than `stale_after` seconds."""

    @abc.abstractmethod
    async def release_answer(self, conversation_id: int, message_id: str, origin: str) -> None: ...

    @abc.abstractmethod
    async def follow_answer(self, conversation_id: int, message_id: str, *, now: float) -> None:
        """Note on the claim, at `now`, that a retry on another process is waiting for this
        answer: the answering process then keeps making it after its own visitor has left
        (followed_answers). Nothing when nobody holds the claim."""

    @abc.abstractmethod
    async def followed_answers(self, claims: list[tuple[int, str]], *, since: float) -> list[bool]:
        """For each (conversation_id, message_id) of `claims`, in order: whether a retry elsewhere
        noted following it (follow_answer) at or after `since`."""

    async def finish_answer(
        self, conversation_id: int, reply_to: str, origin: str, *, role: str, content: str | None,
        sources: Iterable[Source] = (), status: str = "complete", usage: dict[str, Any] | None = None,
        relevance: float | None = None, handoff: str | None, events: Callable[[Message | None], Events],
    ) -> Message | None:
        """The end of an answer to the visitor message `reply_to`: the reply (as add_message;
        none when `content` is None), the conversation handed to a person when `handoff` (its
        reason, one of HANDOFF_REASONS; None: not handed over), the
        events telling of them (`events(reply)`, recorded for `origin`), and `origin`'s claim on
        answering released. One transaction where the store can: what each answer's end costs
        the store. The caller then delivers the events locally."""
        reply = None
        if content is not None:
            reply = await self.add_message(conversation_id, role, content, reply_to=reply_to,
                                           sources=sources, status=status, usage=usage,
                                           relevance=relevance)
        if handoff:
            await self.update_conversation(conversation_id, {"handoff": True, "handoff_reason": handoff})
        await self._record_events_of_stored_write(events(reply), origin)
        await self.release_answer(conversation_id, reply_to, origin)
        return reply

    async def renew_claims(self, claims: list[tuple[int, str]], origin: str, *, now: float,
                           stale_after: float) -> list[bool]:
        """claim_answer for each (conversation_id, message_id) of `claims`, in order: a process's
        heartbeat over every answer it is making. One transaction where the store can."""
        return [await self.claim_answer(conversation_id, message_id, origin, now=now,
                                        stale_after=stale_after)
                for conversation_id, message_id in claims]

    # Events feed: how processes hear each other's writes
    # True where an event id is never visible before every smaller one (one writer at a time, as
    # SQLite): readers need not look back below their cursor for late commits.
    event_ids_commit_in_order = False

    @abc.abstractmethod
    async def record_event(self, topic: str, kind: str, payload: dict[str, Any], origin: str) -> int: ...

    async def record_events(self, events: list[tuple[str, str, dict[str, Any]]], origin: str) -> list[int]:
        """Several (topic, kind, payload) events of one write, in order; one transaction where the
        store can (a visitor's news goes to its own topic and to the site's operators)."""
        return [await self.record_event(topic, kind, payload, origin) for topic, kind, payload in events]

    async def wait_for_news(self, timeout: float) -> bool:
        """Until another process may have recorded events, or `timeout` passes; True when told.
        A store that cannot be told only waits."""
        await asyncio.sleep(timeout)
        return False

    @abc.abstractmethod
    async def latest_event_id(self) -> int: ...

    @abc.abstractmethod
    async def events_since(self, after: int, *, exclude_origin: str, limit: int) -> list[Event]:
        """Events with ids above `after`, oldest first, leaving out those `exclude_origin` wrote."""

    async def events_and_latest(self, after: int, *, exclude_origin: str, limit: int
                                ) -> tuple[list[Event], int]:
        """`events_since`, and the latest event id read just before them: where ids commit in
        order, every id up to it was committed by then."""
        latest = await self.latest_event_id()
        return await self.events_since(after, exclude_origin=exclude_origin, limit=limit), latest

    @abc.abstractmethod
    async def events_by_id(self, ids: list[int]) -> list[Event]:
        """The events among `ids` that exist now, oldest first (a reader looking again at ids it
        saw skipped)."""

    @abc.abstractmethod
    async def prune_events(self, older_than: float) -> int: ...

    @abc.abstractmethod
    async def oldest_event_id(self) -> int:
        """The smallest event id still kept (0 when none): a feed cursor below it missed events."""

    @abc.abstractmethod
    async def events_for_topics(self, after: int, topics: tuple[str, ...], *,
                                limit: int) -> list[Event]:
        """Events of any origin on these topics with ids above `after`, oldest first."""

    # Operators (dashboard accounts)
    @abc.abstractmethod
    async def create_operator(self, email: str, name: str, role: str, password_hash: str,
                              site_ids: Iterable[int] = ()) -> Operator:
        """Raise DuplicateOperator when the email is taken."""

    @abc.abstractmethod
    async def get_operator(self, operator_id: int) -> Operator | None: ...

    @abc.abstractmethod
    async def get_operator_by_email(self, email: str) -> Operator | None: ...

    @abc.abstractmethod
    async def list_operators(self, limit: int = 1000) -> list[Operator]: ...

    @abc.abstractmethod
    async def count_operators(self) -> int: ...

    @abc.abstractmethod
    async def update_operator(self, operator_id: int, changes: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def set_operator_sites(self, operator_id: int, site_ids: Iterable[int]) -> None: ...

    # Operator sign-in sessions, failures, the first-admin setup token
    @abc.abstractmethod
    async def create_operator_session(self, session: OperatorSession) -> None: ...

    @abc.abstractmethod
    async def get_operator_session(self, token_hash: str) -> OperatorSession | None: ...

    @abc.abstractmethod
    async def touch_operator_session(self, token_hash: str, now: float,
                                     second_factor_done: bool | None = None) -> None: ...

    @abc.abstractmethod
    async def mark_operator_present(self, token_hash: str, now: float) -> None:
        """A dashboard tab of this session is open (its live feed says so now and then)."""

    @abc.abstractmethod
    async def operators_present(self, *, since: float, site_id: int | None = None,
                                limit: int = 1000) -> list[int]:
        """Ids of the operators with a session past its second factor that made a request or
        said it is present at or after `since`, each once, smallest first. With `site_id`, only
        the enabled ones who may answer that site (admins, and agents assigned to it)."""

    @abc.abstractmethod
    async def delete_operator_sessions(self, *, operator_id: int | None = None,
                                       token_hash: str | None = None,
                                       idle_before: float | None = None) -> int: ...

    @abc.abstractmethod
    async def record_login_failure(self, keys: Iterable[str], now: float) -> None: ...

    @abc.abstractmethod
    async def count_login_failures(self, key: str, since: float) -> int: ...

    @abc.abstractmethod
    async def clear_login_failures(self, key: str, *, before: float | None = None) -> None:
        """Forget `key`'s failures (all, or only those older than `before`)."""

    @abc.abstractmethod
    async def prune_login_failures(self, before: float) -> int:
        """Forget every failure older than `before` (housekeeping)."""

    @abc.abstractmethod
    async def add_setup_token(self, token_hash: str, expires_at: float) -> None: ...

    @abc.abstractmethod
    async def use_setup_token(self, token_hash: str, now: float, *, consume: bool = True) -> bool:
        """Mark the token used; True only for the one caller that found it unused and unexpired.
        With consume=False, only say whether it could be used."""

    # Audit log
    @abc.abstractmethod
    async def add_audit(self, *, operator_id: int | None, operator_email: str | None, action: str,
                        site_id: int | None, target: str | None, detail: dict[str, Any],
                        ip: str | None) -> None: ...

    @abc.abstractmethod
    async def list_audit(self, *, limit: int = 200, before: int | None = None) -> list[AuditEntry]: ...

    # The dashboard's reads and notes
    @abc.abstractmethod
    async def get_conversation_by_id(self, conversation_id: int) -> Conversation | None: ...

    @abc.abstractmethod
    async def list_inbox(self, site_ids: Iterable[int], *, status: str = "all",
                         operator_id: int | None = None, search: str | None = None,
                         limit: int = 50, before: tuple[str, int] | None = None,
                         visitor: str | None = None) -> list[InboxEntry]:
        """Conversations of these sites, newest activity first (ties: highest id first). `status`:
        all, handoff, mine, unassigned, operator, ai, closed (all and the others leave closed ones
        out). `search`: words that must all appear in one of the conversation's messages
        (full-text). `before`: (updated_at, id) of the last one of the page before. `visitor`:
        only the conversation whose email (in any case; given in lower case) or session id this is."""

    @abc.abstractmethod
    async def visitors_online(self, site_ids: Iterable[int], *, since: float,
                              limit: int = 200) -> list[Conversation]:
        """Conversations whose visitor made a request at or after `since`, most recent first."""

    @abc.abstractmethod
    async def add_note(self, conversation_id: int, operator_id: int | None, author: str,
                       content: str) -> Note: ...

    @abc.abstractmethod
    async def list_notes(self, conversation_id: int, limit: int = 500) -> list[Note]: ...

    @abc.abstractmethod
    async def list_blocks(self, site_id: int, *, now: float,
                          limit: int = 500) -> list[dict[str, Any]]:
        """Blocks in force on the site: kind, value, reason, expires_at."""

    @abc.abstractmethod
    async def list_canned_replies(self, site_id: int, limit: int = 500) -> list[CannedReply]: ...

    @abc.abstractmethod
    async def save_canned_reply(self, site_id: int, shortcut: str, content: str) -> CannedReply: ...

    @abc.abstractmethod
    async def remove_canned_reply(self, site_id: int, reply_id: int) -> bool: ...
