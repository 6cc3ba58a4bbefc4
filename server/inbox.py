"""What an operator may see, and the dashboard's reads: the inbox, one conversation, the live feed.

Admins see every site, agents the sites they are assigned to. Anything outside them is reported
as not found, never as forbidden: there is nothing to enumerate.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from server.errors import InvalidRequest, NotFound
from server.hub import Hub, site_topic
from server.presence import ONLINE_SECONDS, is_online
from server.store.base import Store
from server.store.models import CannedReply, Conversation, Event, InboxEntry, Message, Note, Operator, Site
from server.validation import EMAIL_RE, SESSION_ID_RE

INBOX_FILTERS = ("all", "handoff", "mine", "unassigned", "operator", "ai", "closed")
INBOX_PAGE = 50
INBOX_MAX_PAGE = 500  # a refresh of every page a tab has loaded (it asks for as many as it shows)
FEED_BATCH = 200
FEED_BUFFER = 1024
FEED_WAIT_SECONDS = 300.0
# How often an open feed asks whether its operator may still read it: the most a revoked operator
# (signed out, disabled, a site taken away) goes on hearing.
ALLOWED_CHECK_SECONDS = 10.0
# Ids handed out by a counter (MongoDB) can commit a little out of order: each read looks this far
# back below the cursor for one that arrived late, and skips what it already sent.
FEED_LOOKBACK = 64
CONVERSATION_MESSAGES = 500


@dataclass(frozen=True)
class FeedEvent:
    """One event for a dashboard tab: `id` from the store's events feed (None for live-only
    events such as answer chunks, which are never replayed)."""
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @functools.cached_property
    def json(self) -> str:
        """{"kind": ..., **data} as JSON: encoded once, however many tabs a live chunk goes to."""
        return json.dumps({"kind": self.kind, **self.data}, ensure_ascii=False, separators=(",", ":"))


def inbox_cursor(entry: InboxEntry) -> str:
    """Where the next page of the inbox starts: after this entry, by activity then id (many
    conversations can share a time)."""
    return f"{entry.conversation.updated_at}~{entry.conversation.id}"


def parse_inbox_cursor(cursor: str) -> tuple[str, int]:
    updated_at, _, conversation_id = cursor.rpartition("~")
    if not updated_at or not conversation_id.isascii() or not conversation_id.isdigit():
        raise InvalidRequest("'before' must be the 'next' of an inbox page.")
    return updated_at, int(conversation_id)


@dataclass(frozen=True)
class ConversationView:
    site: Site
    conversation: Conversation
    messages: list[Message]
    notes: list[Note]
    blocked: bool
    online: bool
    earlier: bool  # older messages than `messages` exist (the view holds CONVERSATION_MESSAGES)


class InboxService:
    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        # Feed reads in flight, by (cursor, topics, limit): with the hub's delivery count when each began
        self._reads: dict[tuple[Any, ...], tuple[int, asyncio.Future[list[Event]]]] = {}
        # The tabs' events made from the latest shared read and the latest live chunk, for the next tab
        self._last_read: tuple[list[Event], dict[int, FeedEvent]] | None = None
        self._last_chunk: tuple[dict[str, Any], FeedEvent] | None = None

    # -- who sees what ------------------------------------------------------------------------
    async def sites_of(self, operator: Operator) -> list[Site]:
        sites = await self.store.list_sites()
        if operator.is_admin:
            return sites
        return [site for site in sites if site.id in operator.site_ids]

    async def active_operators(self) -> list[Operator]:
        """Who a conversation can be assigned to: every operator not disabled."""
        return [o for o in await self.store.list_operators() if not o.disabled]

    async def canned_replies(self, sites: list[Site]) -> dict[int, list[CannedReply]]:
        return {site.id: await self.store.list_canned_replies(site.id) for site in sites}

    async def site(self, operator: Operator, site_id: int) -> Site:
        for site in await self.sites_of(operator):
            if site.id == site_id:
                return site
        raise NotFound("No such site.")

    async def conversation(self, operator: Operator, conversation_id: int) -> tuple[Site, Conversation]:
        conversation = await self.store.get_conversation_by_id(conversation_id)
        if conversation is not None:
            for site in await self.sites_of(operator):
                if site.id == conversation.site_id:
                    return site, conversation
        raise NotFound("No such conversation.")

    # -- reads --------------------------------------------------------------------------------
    async def inbox(self, operator: Operator, *, status: str = "all", search: str | None = None,
                    site_id: int | None = None, before: str | None = None,
                    limit: int = INBOX_PAGE) -> list[InboxEntry]:
        site_ids = [s.id for s in await self.sites_of(operator)]
        if site_id is not None:
            site_ids = [s for s in site_ids if s == site_id]
        search = (search or "").strip()[:200] or None
        status = status if status in INBOX_FILTERS else "all"
        cursor = parse_inbox_cursor(before) if before else None
        # An email or a session id is what support staff paste to find one visitor; an email only
        # ever typed into a message is still found by the full-text search.
        if search and (EMAIL_RE.match(search) or SESSION_ID_RE.match(search)):
            visitor = search.lower() if "@" in search else search
            found = await self.store.list_inbox(site_ids, status=status, operator_id=operator.id,
                                                visitor=visitor, limit=limit, before=cursor)
            if found:
                return found
        return await self.store.list_inbox(site_ids, status=status, operator_id=operator.id,
                                           search=search, limit=limit, before=cursor)

    def is_online(self, conversation: Conversation, now: float | None = None) -> bool:
        return is_online(conversation.last_seen_at, now or time.time())

    async def view(self, operator: Operator, conversation_id: int) -> ConversationView:
        site, conversation = await self.conversation(operator, conversation_id)
        messages = await self.store.recent_messages(conversation.id, CONVERSATION_MESSAGES + 1)
        earlier = len(messages) > CONVERSATION_MESSAGES
        messages = messages[len(messages) - CONVERSATION_MESSAGES:] if earlier else messages
        notes = await self.store.list_notes(conversation.id)
        blocked = await self.store.is_blocked(site.id, session_id=conversation.session_id,
                                              ip=conversation.ip, email=conversation.email,
                                              now=time.time())
        return ConversationView(site, conversation, messages, notes, blocked,
                                self.is_online(conversation), earlier)

    async def messages_after(self, operator: Operator, conversation_id: int,
                             after: int) -> tuple[Conversation, list[Message], list[Note]]:
        _, conversation = await self.conversation(operator, conversation_id)
        messages = await self.store.list_messages(conversation.id, after=after, limit=200)
        notes = await self.store.list_notes(conversation.id)
        return conversation, messages, notes

    async def online(self, operator: Operator) -> list[tuple[Site, Conversation]]:
        sites = {s.id: s for s in await self.sites_of(operator)}
        visitors = await self.store.visitors_online(sites, since=time.time() - ONLINE_SECONDS)
        return [(sites[c.site_id], c) for c in visitors]

    async def cursor(self) -> int:
        """Where a page rendered now should start its feed."""
        return await self.store.latest_event_id()

    # -- the live feed ------------------------------------------------------------------------
    async def _events_for(self, after: int, topics: tuple[str, ...], limit: int) -> list[Event]:
        """The feed's read, shared: tabs woken by the same event ask for the same rows at once, and
        one store read serves them all. A tab joins only a read that began after every event
        delivered here so far, so the read sees what woke the tab (recorded before delivered)."""
        key = (after, topics, limit)
        shared = self._reads.get(key)
        if shared is None or shared[0] < self.hub.deliveries:
            future = asyncio.ensure_future(self.store.events_for_topics(after, topics, limit=limit))
            shared = self._reads[key] = (self.hub.deliveries, future)

            def done(future: asyncio.Future[list[Event]], key: tuple[Any, ...] = key,
                     shared: tuple[int, asyncio.Future[list[Event]]] = shared) -> None:
                if self._reads.get(key) is shared:
                    del self._reads[key]
                if not future.cancelled():
                    future.exception()  # retrieved here when every tab that asked has gone

            future.add_done_callback(done)
        # One tab leaving (cancelled) must not cancel the read the others wait on.
        return await asyncio.shield(shared[1])

    def _feed_event(self, read: list[Event], event: Event) -> FeedEvent:
        """A stored event as tabs get it: made once for all the tabs that share the read."""
        made = self._last_read
        if made is None or made[0] is not read:
            made = self._last_read = (read, {})
        feed_event = made[1].get(event.id)
        if feed_event is None:
            site_id = int(event.topic.partition(":")[2])
            feed_event = made[1][event.id] = FeedEvent(event.kind, {**event.payload, "site_id": site_id}, event.id)
        return feed_event

    def _chunk_event(self, event: dict[str, Any]) -> FeedEvent:
        """A live chunk as tabs get it: made once for all the tabs the hub hands it to in turn."""
        last = self._last_chunk
        if last is None or last[0] is not event:
            last = self._last_chunk = (event, FeedEvent("chunk", {k: v for k, v in event.items() if k != "kind"}))
        return last[1]

    async def feed(self, operator: Operator, after: int | None,
                   allowed: Callable[[], Awaitable[bool]] | None = None,
                   push_live: Callable[[list[FeedEvent]], None] | None = None,
                   ) -> AsyncIterator[list[FeedEvent]]:
        """Everything stored on the operator's sites since `after` (an event id), then live, in
        batches: what one read of the store or one wake-up brought, written and flushed at once.

        `push_live`, once the feed is ready: answers' live chunks are handed to it as they are
        published, in the publisher's task, rather than waking this feed's task for each (with
        50 tabs open, a chunk is 50 wake-ups otherwise).

        When `after` is older than the events still kept, one `refetch` event says so first:
        the page reloads its lists rather than trust a feed with a hole in it.

        `allowed`, asked every ALLOWED_CHECK_SECONDS: once it says no (the operator signed out,
        was disabled, or lost a site), the feed ends, whatever it was waiting for.
        """
        topics = tuple(site_topic(site.id) for site in await self.sites_of(operator))
        # Ids that can commit out of order (MongoDB's counter) need a look back below the cursor.
        lookback = 0 if self.store.event_ids_commit_in_order else FEED_LOOKBACK
        async with self.hub.subscribe(*topics, buffer=FEED_BUFFER) as subscription:
            latest = await self.store.latest_event_id()
            opening = []
            if after is None or after > latest:
                cursor = latest  # a cursor from the future (a new data directory): start now
            else:
                cursor = after
                oldest = await self.store.oldest_event_id()
                if after < latest and (oldest == 0 or after < oldest - 1):
                    cursor = latest
                    opening.append(FeedEvent("refetch", {}, latest))
            yield [*opening, FeedEvent("ready", {}, cursor)]
            if push_live is not None:
                def push_chunk(event: dict[str, Any]) -> bool:
                    if event.get("kind") != "chunk":
                        return False
                    push_live([self._chunk_event(event)])
                    return True

                subscription.push = push_chunk
            sent: collections.deque[int] = collections.deque(maxlen=4 * FEED_LOOKBACK)
            floor = cursor  # never look below where this tab started
            read = True
            checked = read_at = time.monotonic()
            while True:
                if allowed is not None and time.monotonic() - checked >= ALLOWED_CHECK_SECONDS:
                    if not await allowed():
                        return
                    checked = time.monotonic()
                batch: list[FeedEvent] = []
                if read:
                    read_at = time.monotonic()
                    events = await self._events_for(max(floor, cursor - lookback), topics,
                                                    FEED_BATCH + lookback)
                    fresh = [e for e in events if e.id not in sent] if lookback else events
                    for event in fresh:
                        if lookback:
                            sent.append(event.id)
                        if event.id > cursor:
                            cursor = event.id
                            batch.append(self._feed_event(events, event))
                        else:  # one that committed late: it carries this tab's cursor, not its own id
                            batch.append(FeedEvent(event.kind, self._feed_event(events, event).data, cursor))
                    if batch:
                        yield batch
                    if len(fresh) >= FEED_BATCH:
                        continue
                until = read_at + FEED_WAIT_SECONDS
                if allowed is not None:
                    until = min(until, checked + ALLOWED_CHECK_SECONDS)
                woke = await subscription.wait(max(0.0, until - time.monotonic()))
                if self.hub.closing:  # shutting down: the page's EventSource reconnects elsewhere
                    return
                missed_live = subscription.overflowed
                # Every stored event reaches the hub too (this process's at once, others' through
                # the events feed): woken only by live chunks, there is nothing new to read.
                read = missed_live or (not woke and time.monotonic() - read_at >= FEED_WAIT_SECONDS)
                live = []
                for event in subscription.drain():
                    if event.get("kind") == "chunk":
                        live.append(self._chunk_event(event))
                    else:
                        read = True
                if missed_live:
                    live.append(FeedEvent("chunks_missed", {}))
                if live:
                    yield live
