"""Answers: each visitor message gets one, produced once by one task, whoever is watching.

A retry of the same message_id follows the answer in progress, replays a complete one, or answers
again when the first was cut off (the visitor's connection dropped, the model failed). Across
processes a claim in the store says who is answering, so a retry landing elsewhere waits for that
answer instead of making a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any, Callable

from server.ai.base import AIUnavailable, Answer
from server.ai.engine import AIEngine
from server.answer_watch import AnswerWatch, Watchers
from server.errors import Conflict, ParleyError, Restarting, Unavailable
from server.hub import Hub, site_topic
from server.opening_hours import operators_online
from server.store.base import Events, Store
from server.store.models import Conversation, Message, handoff_event
from server.turns import Turn
from server.visitor import TurnRequest, Visitor

log = logging.getLogger(__name__)

AI_HISTORY_MESSAGES = 20
# A process's claim on an answer is a lease it renews every CLAIM_HEARTBEAT_SECONDS while it
# answers; a claim not renewed for CLAIM_STALE_SECONDS belongs to a dead process, and a retry
# waiting elsewhere (looking every CLAIM_CHECK_SECONDS) takes it over. A slow model does not
# matter, only a silent process.
CLAIM_STALE_SECONDS = 6.0
CLAIM_HEARTBEAT_SECONDS = 1.5
CLAIM_CHECK_SECONDS = 1.0
# The longest a retry follows an answer another (live) process is making.
RELAY_MAX_SECONDS = 300.0


def message_events(visitor: Visitor, message: Message) -> list[tuple[str, str, dict[str, Any]]]:
    """The events telling every process that `message` was stored."""
    return Hub.session_events(visitor.site.id, visitor.session_id, "message",
                              {"message_id": message.id, "role": message.role,
                               "reply_to": message.reply_to})


async def publish_message(hub: Hub, visitor: Visitor, message: Message) -> None:
    await hub.publish_events(message_events(visitor, message))


class Answerer:
    def __init__(self, store: Store, hub: Hub, ai: AIEngine) -> None:
        self.store = store
        self.hub = hub
        self.ai = ai
        self._live_turns: dict[tuple[int, str], Turn] = {}
        self.closing = False  # shutting down: no new answers; a cut answer says so
        self._turn_topics: dict[Turn, str] = {}
        self._claims: set[tuple[int, str]] = set()  # answers this process holds claims on
        self._heartbeat: asyncio.Task[None] | None = None
        # Online as the widget's opening hours count it.
        self._watchers = Watchers(functools.partial(operators_online, store))
        hub.add_listener(self._on_event)

    def _on_event(self, topic: str, event: dict[str, Any]) -> None:
        """An operator taking over stops the AI mid-answer; the partial text is kept, interrupted."""
        if event.get("kind") != "mode" or event.get("mode") != "operator":
            return
        for turn, turn_topic in list(self._turn_topics.items()):
            if turn_topic == topic and turn.producer is not None and not turn.done:
                log.info("an operator took over: stopping the answer in progress")
                turn.producer.cancel()

    async def ask(self, visitor: Visitor, message_id: str, request: TurnRequest, *,
                  context: dict[str, Any], changes: Callable[[Conversation], dict[str, Any]],
                  also: Callable[[Conversation], Events]) -> Turn | None:
        """Store a visitor's new message and start its answer, or rejoin it (a retry of the same
        message_id). The store's whole part is one call (Store.take_question): the conversation
        (made with `context`, changed by `changes`), the block check, the message with its events
        (after `also(conversation)`, the caller's own) and this process's claim on answering it,
        and the history the model is given. None: the visitor is blocked; nothing was stored."""
        recorded: Events = []

        def events_of(conversation: Conversation, message: Message) -> Events:
            recorded[:] = also(conversation) + message_events(visitor, message)
            return recorded

        # What the answer checks first (the session's replies for its cap, the knowledge's
        # version) is read in the question's transaction: a trip to a reader thread for each,
        # waiting for the GIL behind a busy loop, delayed the first token under load.
        taken = await self.store.take_question(
            visitor.site.id, visitor.session_id, request.text, message_id=message_id,
            context=context, changes=changes, ip=visitor.ip, events=events_of,
            origin=self.hub.origin, now=time.time(), stale_after=CLAIM_STALE_SECONDS,
            history=AI_HISTORY_MESSAGES, replies_since=self.ai.replies_since(visitor.site))
        conversation, message = taken.conversation, taken.message
        if taken.blocked or conversation is None:
            return None
        if message is None:
            return await self.rejoin(visitor, conversation, message_id, request)
        log.info("visitor message %s stored %s mode=%s chars=%d", message.id, visitor.log_ref,
                 conversation.mode, len(request.text))
        prepared = self.ai.prepare(visitor.site, request.text, session_id=visitor.session_id,
                                   session_replies=taken.ai_replies,
                                   knowledge_version=taken.knowledge_version)
        turn = self.start(visitor, conversation, message, request, claimed=taken.claimed,
                          history=taken.history, prepared=prepared)
        self.hub.deliver_recorded(recorded)
        return turn

    def start(self, visitor: Visitor, conversation: Conversation, message: Message,
              request: TurnRequest, *, claimed: bool = False,
              history: list[Message] | None = None,
              prepared: asyncio.Future[Any] | None = None) -> Turn:
        """Start answering a stored visitor message (`claimed`: this process already holds the
        claim on answering it, taken with the message; `history`: the messages before it, read
        with it). No await in here: the turn is registered before anything else runs, so a retry
        racing this request finds it."""
        message_id = message.message_id or ""
        if conversation.mode == "operator":
            if prepared is not None:
                prepared.cancel()
            return Turn.finished(self._meta(conversation, message_id, None, "operator"))
        if claimed:
            self._hold_claim((conversation.id, message_id))
        turn = Turn()
        self._live_turns[(conversation.id, message_id)] = turn
        self._turn_topics[turn] = visitor.topic
        # Operators watching the conversation see the answer token by token, on any process.
        turn.on_chunk = AnswerWatch(self.hub, turn, visitor, message_id,
                                    lambda: self._watchers.watching(visitor.site.id)).chunk
        turn.producer = asyncio.create_task(
            self._produce(turn, visitor, conversation, message, request, claimed, history, prepared),
            name=f"answer-{message.id}",
        )
        return turn

    @staticmethod
    def _meta(conversation: Conversation, message_id: str, reply: Message | None, mode: str,
              handoff: bool = False) -> dict[str, Any]:
        return {
            "conversation_id": conversation.id,
            "message_id": message_id,
            "reply_id": reply.id if reply else None,
            "mode": mode,
            "sources": [s.as_dict() for s in reply.sources] if reply else [],
            "handoff": handoff,
        }

    async def rejoin(self, visitor: Visitor, conversation: Conversation, message_id: str,
                      request: TurnRequest) -> Turn:
        """A retry of a stored message: follow its answer, replay it, or answer again if the
        first answer was cut off (the visitor's connection dropped, the model failed)."""
        existing = await self.store.get_visitor_message(conversation.id, message_id)
        if existing is None or existing.content != request.text:
            raise Conflict("This message_id was already used for a different message.")
        key = (conversation.id, message_id)
        if key in self._live_turns:
            log.info("retry of %s follows the answer in progress %s", message_id, visitor.log_ref)
            return self._live_turns[key]
        reply = await self.store.get_reply(conversation.id, message_id)
        if reply is not None and reply.status == "complete":
            log.info("retry of %s replays the stored answer %s", message_id, visitor.log_ref)
            meta = self._meta(conversation, message_id, reply, conversation.mode, conversation.handoff)
            return Turn.finished(meta, reply.content)
        if key in self._live_turns:  # another retry started one while we read the store
            return self._live_turns[key]
        log.info("retry of %s: no answer in progress here (%s); answering it unless another "
                 "process is %s", message_id, "a cut-off one is stored" if reply else "none stored yet",
                 visitor.log_ref)
        return self.start(visitor, conversation, existing, request)

    async def _produce(self, turn: Turn, visitor: Visitor, conversation: Conversation,
                       message: Message, request: TurnRequest, claimed: bool,
                       history: list[Message] | None, prepared: asyncio.Future[Any] | None) -> None:
        try:
            try:
                elsewhere = not claimed and await self._answered_elsewhere(
                    turn, visitor, conversation, message)
            except ParleyError as exc:  # the store is down: say so rather than hang the stream
                turn.fail(exc)
                turn.finish(self._meta(conversation, message.message_id or "", None, "ai"))
                return
            except asyncio.CancelledError:  # relaying another process's answer: end the streams too
                if self.closing:
                    turn.fail(Restarting("The server is restarting; asking again."))
                turn.finish(self._meta(conversation, message.message_id or "", None, "ai"))
                raise
            if not elsewhere:
                await self._generate(turn, visitor, conversation, message, request, history, prepared)
        finally:
            if prepared is not None:
                prepared.cancel()  # when answered elsewhere, or the store failed first
            self._live_turns.pop((conversation.id, message.message_id or ""), None)
            self._turn_topics.pop(turn, None)
            self._claims.discard((conversation.id, message.message_id or ""))

    async def _claim(self, conversation_id: int, message_id: str) -> bool:
        return await self.store.claim_answer(conversation_id, message_id, self.hub.origin,
                                             now=time.time(), stale_after=CLAIM_STALE_SECONDS)

    async def _answered_elsewhere(self, turn: Turn, visitor: Visitor, conversation: Conversation,
                                  message: Message) -> bool:
        """Claim the answer for this process, or relay the one another process is making.

        With several processes, a retry can land on a process that did not take the first
        request. It waits for that answer and replays it; if that answer is cut off (its own
        visitor left) or its process dies (its claim is no longer renewed), it claims and answers
        itself. False: this process holds the claim.
        """
        message_id = message.message_id or ""
        known = await self.store.get_reply(conversation.id, message_id)
        newer_than = known.id if known else 0
        deadline = time.monotonic() + RELAY_MAX_SECONDS
        waiting_logged = False
        async with self.hub.subscribe(visitor.topic) as subscription:
            while True:
                if await self._claim(conversation.id, message_id):
                    # The other answer may have ended since the last look (its reply stored, its
                    # claim let go, both after that read): relay it rather than answer twice.
                    reply = await self.store.get_reply(conversation.id, message_id)
                    if reply is not None and reply.id > newer_than and reply.status == "complete":
                        await self.store.release_answer(conversation.id, message_id, self.hub.origin)
                        self._relay(turn, conversation, message_id, reply)
                        return True
                    self._hold_claim((conversation.id, message_id))
                    if waiting_logged:
                        log.info("took over the answer to %s %s", message.id, visitor.log_ref)
                    return False
                if not waiting_logged:
                    log.info("answer to %s is being made by another process %s", message.id,
                             visitor.log_ref)
                    waiting_logged = True
                # Tells that process to go on with it even if its own visitor has left.
                await self.store.follow_answer(conversation.id, message_id, now=time.time())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Woken by the other process's reply event, or look again soon: a process that
                # died publishes nothing, its claim just stops being renewed.
                await subscription.wait(min(remaining, CLAIM_CHECK_SECONDS))
                subscription.drain()
                reply = await self.store.get_reply(conversation.id, message_id)
                if reply is not None and reply.id > newer_than:
                    if reply.status == "complete":
                        self._relay(turn, conversation, message_id, reply)
                        return True
                    newer_than = reply.id  # cut off there: its process let the claim go
        turn.fail(Unavailable("The answer is taking too long; please try again."))
        turn.finish(self._meta(conversation, message_id, None, "ai"))
        return True

    def _relay(self, turn: Turn, conversation: Conversation, message_id: str, reply: Message) -> None:
        """Another process's finished answer, as this visitor's stream."""
        turn.append(reply.content)
        turn.finish(self._meta(conversation, message_id, reply, "ai"))

    def _hold_claim(self, key: tuple[int, str]) -> None:
        self._claims.add(key)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._renew_claims(), name="answer-claims")

    async def _renew_claims(self) -> None:
        """Renew this process's claims while it holds any: the heartbeat that tells other
        processes it is alive. One store call for all of them (one per answer in progress)."""
        while self._claims:
            await asyncio.sleep(CLAIM_HEARTBEAT_SECONDS)
            claims = list(self._claims)
            if not claims:
                break
            try:
                kept = await self.store.renew_claims(claims, self.hub.origin, now=time.time(),
                                                     stale_after=CLAIM_STALE_SECONDS)
            except ParleyError:
                log.warning("could not renew the claims on %d answer(s); the store is unavailable",
                            len(claims))
                continue
            for (conversation_id, message_id), ours in zip(claims, kept):
                if not ours:
                    log.warning("another process took over the answer to %s in conversation %d "
                                "(this one was silent for over %.0f s)", message_id,
                                conversation_id, CLAIM_STALE_SECONDS)
            await self._keep_followed_answers(claims)

    async def _keep_followed_answers(self, claims: list[tuple[int, str]]) -> None:
        """Answers whose visitor left here go on while a retry on another process waits for them
        (it notes so on the claim every CLAIM_CHECK_SECONDS)."""
        abandoning = {claim: turn for claim in claims
                      if (turn := self._live_turns.get(claim)) is not None and turn.abandoning}
        if not abandoning:
            return
        try:
            followed = await self.store.followed_answers(list(abandoning), since=time.time() - CLAIM_STALE_SECONDS)
        except ParleyError:
            return  # the store is down: the answers are cut as if nobody followed
        for (claim, turn), elsewhere in zip(abandoning.items(), followed):
            if elsewhere and turn.abandoning:
                log.debug("the answer to %s in conversation %d goes on: a retry on another process"
                          " waits for it", claim[1], claim[0])
                turn.followed_elsewhere()

    async def _generate(self, turn: Turn, visitor: Visitor, conversation: Conversation,
                        message: Message, request: TurnRequest,
                        history: list[Message] | None, prepared: asyncio.Future[Any] | None) -> None:
        site = visitor.site
        answer: Answer | None = None
        cancelled = False
        started = time.monotonic()
        # Unless read with the question, the conversation so far is read while the engine checks
        # caps and retrieves knowledge.
        earlier: list[Message] | asyncio.Future[list[Message]] = (
            history if history is not None
            else asyncio.ensure_future(self._earlier_messages(conversation.id, message.id)))
        try:
            try:
                answer = await self.ai.answer(
                    site, request.text,
                    lang=request.lang or conversation.lang or site.setting("lang", "en"),
                    history=earlier,
                    page_url=request.page_url, page_title=request.page_title,
                    session_id=visitor.session_id, prepared=prepared,
                )
            finally:
                if isinstance(earlier, asyncio.Future):
                    earlier.cancel()  # when the engine answered without it (a handoff, a cap)
            # aclosing: however this loop ends (cancelled when the visitor leaves, a failure), the
            # provider's generator is closed now, which closes the upstream HTTP response.
            async with contextlib.aclosing(answer.chunks) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    if chunk:
                        turn.append(chunk)
        except asyncio.CancelledError:
            cancelled = True
            if self.closing:  # an `error` before `done`: the widget asks again, on another process
                turn.fail(Restarting("The server is restarting; asking again."))
        except ParleyError as exc:
            log.warning("answer to %s failed %s: %s", message.id, visitor.log_ref, exc.message)
            turn.fail(exc)
        except Exception:  # a bug in a provider must still end the stream and keep the text
            log.exception("answer to %s crashed %s", message.id, visitor.log_ref)
            turn.fail(AIUnavailable("The assistant failed to answer; please try again."))
        status = "interrupted" if cancelled or turn.error else "complete"
        try:
            await asyncio.shield(self._finish_turn(turn, visitor, conversation, message, answer, status))
        finally:
            log.info("answer to %s %s in %.0f ms chunks=%d %s", message.id, status,
                     (time.monotonic() - started) * 1000, len(turn.chunks), visitor.log_ref)
        if cancelled:
            raise asyncio.CancelledError

    async def _earlier_messages(self, conversation_id: int, message_id: int) -> list[Message]:
        recent = await self.store.recent_messages(conversation_id, AI_HISTORY_MESSAGES)
        return [m for m in recent if m.id != message_id]

    async def _finish_turn(self, turn: Turn, visitor: Visitor, conversation: Conversation,
                           message: Message, answer: Answer | None, status: str) -> None:
        # handoff and usage are read only now: the model's handoff marker and the usage report
        # arrive with the last chunks. An answer the AI failed to give (not one the visitor left)
        # is a question for a person.
        failed = status == "interrupted" and isinstance(turn.error, AIUnavailable)
        reason = "ai_failed" if failed else (answer.handoff_reason if answer else None)
        handoff = reason is not None
        recorded: Events = []

        def events(reply: Message | None) -> Events:
            recorded[:] = message_events(visitor, reply) if reply is not None else []
            if reason is not None:
                recorded.append((site_topic(visitor.site.id), "handoff",
                                 handoff_event(visitor.session_id, reason)))
            return recorded

        reply = None
        try:
            # The reply, the handoff, their events and the claim's release: one store call.
            reply = await self.store.finish_answer(
                conversation.id, message.message_id or "", self.hub.origin,
                role=answer.role if answer else "ai",
                content=turn.text if turn.text or status == "complete" else None,
                sources=answer.sources if answer else [], status=status,
                usage=answer.usage if answer else None,
                relevance=answer.relevance if answer else None, handoff=reason, events=events)
            self.hub.deliver_recorded(recorded)
        except Unavailable as exc:
            turn.fail(exc)  # an unreleased claim goes stale by itself
        finally:
            turn.finish(self._meta(conversation, message.message_id or "", reply, "ai", handoff))

    async def drain(self, grace: float) -> None:
        """Shutting down: give answers in progress `grace` seconds to finish, then cut the rest.
        A cut answer stores its partial text and its streams end with `error` then `done`, so the
        widget asks again (elsewhere). Returns once the streams have sent their last event."""
        self.closing = True
        turns = list(self._live_turns.values())
        producers = [t.producer for t in turns if t.producer is not None]
        if not producers:
            return
        log.info("letting %d answer(s) finish for up to %g s", len(producers), grace)
        _, cut = await asyncio.wait(producers, timeout=grace) if grace > 0 else (set(), set(producers))
        for task in cut:
            task.cancel()
        if cut:
            log.warning("cut %d answer(s) still going after the grace period", len(cut))
            await asyncio.wait(cut, timeout=5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                for turn in turns:
                    await turn.unfollowed()

    async def shutdown(self) -> None:
        """Stop answers in progress now; each stores its partial text before it ends."""
        await self.drain(0)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
