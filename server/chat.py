"""The visitor side of a conversation: messages, held reads, contact, rating, images.

Answers themselves are made in server/answering.py."""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.ai.engine import AIEngine
from server.answering import Answerer, publish_message
from server.blobs import BlobStore
from server.errors import (
    Blocked,
    Conflict,
    RateLimited,
    Restarting,
    Unavailable,
    UnknownConversation,
)
from server.hub import AS_WRITTEN, Hub, Resume, site_topic
from server.images import clean_image
from server.presence import PresenceWriter, is_online
from server.proactive import site_rules
from server.ratelimit import Rate, RateLimiter
from server.sites import upload_limit
from server.store.base import Store
from server.store.models import Conversation, Message, ProactiveMessage
from server.turns import Turn
from server.uploads import Uploads, out_of_room
from server.visitor import TurnRequest, Visitor

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
HISTORY_LIMIT_MAX = 200
SEEN_EVERY_SECONDS = 30  # how often a visitor's presence is written, at most
SEEN_REMEMBERED = 50_000
IMAGE_QUEUE_SECONDS = 20
WAKE_ON_MODE = frozenset({"mode"})
WAKE_ON_MODE_OR_BLOCK = frozenset({"mode", "block"})


@dataclass(frozen=True)
class Limits:
    messages_per_session: Rate = Rate(burst=10, per_minute=20)
    writes_per_ip: Rate = Rate(burst=60, per_minute=120)
    uploads_per_session: Rate = Rate(burst=5, per_minute=10)


class ChatService:
    def __init__(self, store: Store, hub: Hub, ai: AIEngine, blobs: BlobStore,
                 limits: Limits | None = None, *, uploads: Uploads) -> None:
        self.store = store
        self.hub = hub
        self.ai = ai
        self.blobs = blobs
        limits = limits or Limits()
        self._message_limiter = RateLimiter(limits.messages_per_session)
        self._write_limiter = RateLimiter(limits.writes_per_ip)
        self._upload_limiter = RateLimiter(limits.uploads_per_session)
        self.answers = Answerer(store, hub, ai)
        self.uploads = uploads
        self.presence = PresenceWriter(store, hub)
        self._seen: collections.OrderedDict[tuple[int, str], float] = collections.OrderedDict()

    # -- guards -------------------------------------------------------------------------------
    async def is_blocked(self, visitor: Visitor) -> bool:
        conversation = await self.store.get_conversation(visitor.site.id, visitor.session_id)
        return await self.store.is_blocked(
            visitor.site.id,
            session_id=visitor.session_id,
            ip=visitor.ip,
            email=conversation.email if conversation else None,
            now=time.time(),
        )

    def _hit_rates(self, visitor: Visitor, limiter: RateLimiter | None) -> None:
        """The IP's write rate, then the endpoint's own rate (in memory: before any store work)."""
        if visitor.ip:
            self._write_limiter.hit(f"{visitor.site.id}:{visitor.ip}")
        if limiter is not None:
            limiter.hit(f"{visitor.site.id}:{visitor.session_id}")

    def _refuse_blocked(self, visitor: Visitor) -> Blocked:
        log.info("refused a write from a blocked visitor %s", visitor.log_ref)
        return Blocked("You can no longer send messages in this chat.")

    async def guard_write(self, visitor: Visitor, limiter: RateLimiter | None = None) -> None:
        """Every write: the IP's rate, the endpoint's own rate, then the block list."""
        self._hit_rates(visitor, limiter)
        if await self.is_blocked(visitor):
            raise self._refuse_blocked(visitor)

    # -- a visitor message and its answer ----------------------------------------------------
    async def start_turn(self, visitor: Visitor, request: TurnRequest) -> Turn:
        """Store the visitor's message and start (or rejoin) its answer.

        The guards of every write, in the same order (rates, then the block list, before anything
        is stored), but the store's part is one call: the conversation, the block check, the page
        the visitor is on now and their presence, the message with its events and the claim on
        answering it, and the history the model is given (Store.take_question)."""
        if self.answers.closing:
            raise Restarting("The server is restarting; please send again.")
        self._hit_rates(visitor, self._message_limiter)
        message_id = request.message_id or "m_" + secrets.token_urlsafe(12)
        context = {"lang": request.lang, "page_url": request.page_url,
                   "page_title": request.page_title, "ip": visitor.ip}
        seen_at = self._presence_due(visitor)

        def changes(conversation: Conversation) -> dict[str, Any]:
            # Operators see the page the visitor is on now, not the one where the chat began.
            updates: dict[str, Any] = {k: v for k, v in context.items() if v and getattr(conversation, k) != v}
            if conversation.closed:  # the visitor wrote again: back in the operators' inbox
                updates["closed"] = False
            if seen_at is not None:
                updates.update(self._presence_changes(visitor, conversation, seen_at))
            return updates

        def presence(conversation: Conversation) -> list[tuple[str, str, dict[str, Any]]]:
            if seen_at is None or not self._arrived(conversation, seen_at):
                return []
            return [(site_topic(visitor.site.id), "seen", {"session_id": visitor.session_id})]

        turn = await self.answers.ask(visitor, message_id, request, changes=changes, also=presence,
                                      context={k: v for k, v in context.items() if v})
        if turn is None:
            raise self._refuse_blocked(visitor)
        return turn

    # -- presence -----------------------------------------------------------------------------
    def _presence_due(self, visitor: Visitor) -> float | None:
        """Now, if the visitor's presence is to be written (at most every SEEN_EVERY_SECONDS per
        session); None otherwise. Counts as written from here on."""
        key = (visitor.site.id, visitor.session_id)
        now = time.time()
        last = self._seen.get(key)
        if last is not None and now - last < SEEN_EVERY_SECONDS:
            return None
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN_REMEMBERED:
            self._seen.popitem(last=False)
        return now

    @staticmethod
    def _presence_changes(visitor: Visitor, conversation: Conversation, now: float,
                          page_url: str | None = None) -> dict[str, Any]:
        changes: dict[str, Any] = {"last_seen_at": now}
        if visitor.user_agent and conversation.user_agent != visitor.user_agent:
            changes["user_agent"] = visitor.user_agent
        if page_url and conversation.page_url != page_url:
            changes["page_url"] = page_url
        return changes

    @staticmethod
    def _arrived(conversation: Conversation, now: float) -> bool:
        """Not seen for a while: operators' "visitors online" hears of them."""
        return not is_online(conversation.last_seen_at, now)

    async def mark_seen(self, visitor: Visitor, page_url: str | None = None, *,
                        conversation: Conversation | None = None) -> None:
        """Note that the visitor is here (and on which page), for operators' "visitors online".
        Written at most every SEEN_EVERY_SECONDS per session; a visitor who has not chatted yet
        gets a conversation row only when the widget says which page it is on. `conversation`:
        the visitor's, just read (saves reading it again)."""
        now = self._presence_due(visitor)
        if now is None:
            return
        try:
            if conversation is None:
                conversation = await self.store.get_conversation(visitor.site.id, visitor.session_id)
            if conversation is None:
                if not page_url:
                    # Nothing written: the slot stays free for the request that can write it (the
                    # widget's first question or its page, right after this first read).
                    self._seen.pop((visitor.site.id, visitor.session_id), None)
                    return
                if visitor.ip:  # a new row is a write: invented sessions count against the address
                    self._write_limiter.hit(f"{visitor.site.id}:{visitor.ip}")
                conversation = await self.store.ensure_conversation(
                    visitor.site.id, visitor.session_id, {"page_url": page_url, "ip": visitor.ip})
            arrived = [(site_topic(visitor.site.id), "seen", {"session_id": visitor.session_id})
                       ] if self._arrived(conversation, now) else []
            self.presence.note(conversation.id, self._presence_changes(visitor, conversation, now, page_url),
                               arrived)
        except (RateLimited, Unavailable):
            return  # presence is a nicety: never fail a visitor's read for it

    # -- held reads ---------------------------------------------------------------------------
    # Each held read awaits hub.hold itself, after _ready_to_hold: thousands are held at once, and
    # a coroutine wrapped around the hold would be kept, with its frame, for the whole wait.
    async def _ready_to_hold(self, visitor: Visitor, wait: float, page_url: str | None = None) -> None:
        if wait > 0 and not self.hub.closing:
            self.hub.check_room(visitor.topic, visitor.ip)  # a refusal costs no store work
        await self.mark_seen(visitor, page_url)

    async def history(self, visitor: Visitor, *, after: int | None, limit: int,
                      wait: float) -> tuple[Conversation | None, list[Message]]:
        async def fetch() -> tuple[Conversation | None, list[Message]]:
            return await self.store.conversation_messages(
                visitor.site.id, visitor.session_id, after=after, limit=min(limit, HISTORY_LIMIT_MAX))

        await self._ready_to_hold(visitor, wait)
        # A takeover or a block changes what the widget shows even without a new message.
        return await self.hub.hold(visitor.topic, wait, fetch, lambda result: bool(result[1]),
                                   address=visitor.ip, wake_on=WAKE_ON_MODE_OR_BLOCK)

    async def operator_messages(self, visitor: Visitor, *, after: int | None,
                                wait: float) -> tuple[list[Message], str]:
        async def fetch() -> tuple[list[Message], str]:
            conversation, messages = await self.store.conversation_messages(
                visitor.site.id, visitor.session_id, after=after, limit=HISTORY_LIMIT_MAX,
                roles=("operator",))
            return messages, conversation.mode if conversation else "ai"

        first_mode: str | None = None

        def is_news(result: tuple[list[Message], str]) -> bool:
            nonlocal first_mode
            if first_mode is None:
                first_mode = result[1]
            return bool(result[0]) or result[1] != first_mode

        def settle(events: list[dict[str, Any]]) -> tuple[list[Message], str] | None:
            # Woken by one message written in this process, right after the cursor as of its own
            # write (no operator message between): a read would find it and no other, so it is
            # the answer. Anything else (several events, another process's message that the
            # write saw first, a message not after the cursor) is read from the store.
            written = events[0].get(AS_WRITTEN) if len(events) == 1 else None
            if written is None:
                return None
            previous, mode, message = written
            cursor = after or 0
            return ([message], mode) if previous <= cursor < message.id else None

        def after_answer(answer: tuple[list[Message], str]) -> tuple[int, tuple[list[Message], str]] | None:
            # The widget asks again at once with the newest id it got: nothing new yet is what a
            # read would find then. Not after a full page: there may be more to read.
            messages, mode = answer
            if len(messages) >= HISTORY_LIMIT_MAX:
                return None
            return (messages[-1].id if messages else after or 0), ([], mode)

        await self._ready_to_hold(visitor, wait)
        # A mode event ends the wait too: the first read may already see the new mode (reads
        # and writes run side by side), and then no later read would look different.
        return await self.hub.hold(visitor.topic, wait, fetch, is_news, address=visitor.ip,
                                   wake_on=WAKE_ON_MODE, settle=settle,
                                   resume=Resume("operator-messages", after or 0, after_answer))

    async def pending_proactive(self, visitor: Visitor, *, after: int | None, wait: float,
                                page_url: str | None = None) -> list[ProactiveMessage]:
        site, session_id = visitor.site, visitor.session_id
        now = time.time()
        if after:
            await self.store.ack_proactive(site.id, session_id, after, now=now)
        if page_url:
            await self._apply_rules(visitor, page_url, now)
        # A rule message falling due is news no one publishes: end the wait when it is due.
        due = await self.store.next_proactive_due(site.id, session_id, now=now)
        if due is not None:
            wait = min(wait, max(0.0, due - now) + 0.01)

        async def fetch() -> list[ProactiveMessage]:
            return await self.store.pending_proactive(site.id, session_id, now=time.time())

        await self._ready_to_hold(visitor, wait, page_url)
        return await self.hub.hold(visitor.topic, wait, fetch, bool, address=visitor.ip)

    async def _apply_rules(self, visitor: Visitor, page_url: str, now: float) -> None:
        """Queue the site's rules matching this page, once per session. A read that writes: each
        new row counts against the address's write rate, so invented sessions cannot fill the table."""
        site = visitor.site
        for rule in site_rules(site):
            if not rule.matches(page_url):
                continue
            queued = await self.store.add_proactive(site.id, visitor.session_id, rule.text, "rule",
                                                    rule_key=rule.id, deliver_at=now + rule.delay_seconds)
            if queued is not None and visitor.ip:
                try:
                    self._write_limiter.hit(f"{site.id}:{visitor.ip}")
                except RateLimited:
                    log.warning("stopped queueing rule messages for a busy address on site=%s", site.id)
                    return

    # -- contact, rating ----------------------------------------------------------------------
    async def save_contact(self, visitor: Visitor, *, email: str | None = None,
                           phone: str | None = None, name: str | None = None) -> None:
        await self.guard_write(visitor)
        conversation = await self.store.ensure_conversation(visitor.site.id, visitor.session_id, {})
        changes = {k: v for k, v in (("email", email), ("phone", phone), ("contact_name", name)) if v}
        await self.store.update_conversation(conversation.id, changes)
        log.info("contact saved %s fields=%s", visitor.log_ref, ",".join(sorted(changes)))
        await self.hub.publish(site_topic(visitor.site.id), "contact",
                               {"session_id": visitor.session_id})

    async def _existing_conversation(self, visitor: Visitor) -> Conversation:
        conversation = await self.store.get_conversation(visitor.site.id, visitor.session_id)
        if conversation is None:
            raise UnknownConversation("This session has no conversation to rate yet.")
        return conversation

    async def rate(self, visitor: Visitor, score: int) -> None:
        await self.guard_write(visitor)
        conversation = await self._existing_conversation(visitor)
        await self.store.update_conversation(conversation.id, {"rating": score})
        log.info("rated %d %s", score, visitor.log_ref)
        await self.hub.publish(site_topic(visitor.site.id), "rating",
                               {"session_id": visitor.session_id, "score": score})

    async def comment(self, visitor: Visitor, comment: str) -> None:
        await self.guard_write(visitor)
        conversation = await self._existing_conversation(visitor)
        if conversation.rating is None:
            raise Conflict("Rate the conversation before adding a comment.")
        await self.store.update_conversation(conversation.id, {"rating_comment": comment})
        await self.hub.publish(site_topic(visitor.site.id), "rating",
                               {"session_id": visitor.session_id})

    # -- images -------------------------------------------------------------------------------
    async def admit_upload(self, visitor: Visitor) -> int:
        """Before an upload's body is read: the rates and the block list; its largest size."""
        await self.guard_write(visitor, self._upload_limiter)
        return upload_limit(visitor.site)

    async def upload_image(self, visitor: Visitor, image_file: Path) -> Message:
        """Store an admitted upload (its body spooled to `image_file`) as a visitor message."""
        # Decoding a 40-megapixel image takes seconds and ~200 MB: a few at a time, and in turns
        # between addresses, so one address sending many cannot make everyone else wait.
        async with self.uploads.decodes.turn(visitor.ip, timeout=IMAGE_QUEUE_SECONDS):
            image = await asyncio.to_thread(clean_image, image_file, max_pixels=MAX_PIXELS)
        try:
            key = await self.blobs.put(image.data, image.extension, image.content_type)
        except OSError as exc:
            raise out_of_room(exc) from None
        conversation = await self.store.ensure_conversation(visitor.site.id, visitor.session_id, {})
        message = await self.store.add_message(conversation.id, "visitor", "", image_key=key)
        log.info("image %s stored (%dx%d, %d bytes) %s", key, image.width, image.height,
                 len(image.data), visitor.log_ref)
        await publish_message(self.hub, visitor, message)
        return message

    def image_url(self, message: Message, base_url: str) -> str | None:
        return self.blobs.url_for(message.image_key, base_url) if message.image_key else None

    async def drain(self, grace: float) -> None:
        await self.answers.drain(grace)

    async def shutdown(self) -> None:
        await self.answers.shutdown()
        await self.presence.close()
