"""The AI engine: caps, the handoff rule, retrieval, privacy, and the provider that writes the words.

The handoff rule, in order:
1. a visitor who asks for a person (built-in phrases in several languages, plus the site's own
   `handoff_phrases`) is handed over at once, without calling the model;
2. past a cap (replies per session per hour, per site per day) the visitor is told so and handed
   over; a message longer than the site's input limit is refused with a request to shorten it;
3. a question with no relevant knowledge is handed over where the site sets `handoff_when_unsure`;
4. the model itself may end its answer with the marker [[HANDOFF]]; the marker is removed from the
   text (never streamed: a short tail that could start the marker is held back) and hands over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from typing import AsyncIterator, Awaitable, Callable

from server.ai.base import Answer, AnswerRequest, Provider, Usage
from server.ai.caps import CapChecker, CapNotice
from server.ai.knowledge import KnowledgeBase, Retrieval
from server.ai.phrases import AWAY_HANDOFF, HANDING_OVER, asks_for_human, pick, small_talk
from server.ai.prompt import HANDOFF_MARKER, fit_passages
from server.ai.redact import redact
from server.ai.settings import ai_setting
from server.store.models import Message, Site

HISTORY_TURNS = 12


def _retrieved(future: asyncio.Future[object]) -> None:
    """A prepare() nobody awaited (cancelled, no answer followed) must not log its failure."""
    if not future.cancelled():
        future.exception()


async def _single(text: str) -> AsyncIterator[str]:
    yield text


def _held_tail(text: str, marker: str = HANDOFF_MARKER) -> int:
    """How many trailing characters of `text` could be the start of `marker`."""
    if marker[0] not in text[1 - len(marker):]:  # nearly every chunk: nothing to hold back
        return 0
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


async def relay(answer_of: Callable[[], Answer], items: AsyncIterator[str | Usage]) -> AsyncIterator[str]:
    """Provider output to visitor text: usage taken aside, the handoff marker taken out.

    `answer_of` returns the Answer this text belongs to (the Answer holds this generator, so it
    cannot be passed in directly); its `usage` and `handoff` are set as they become known.
    """
    answer = answer_of()
    held = ""
    async with contextlib.aclosing(items):  # type: ignore[type-var]
        async for item in items:
            if isinstance(item, Usage):
                answer.usage = item.data
                continue
            held += item
            if HANDOFF_MARKER in held:
                held = held.replace(HANDOFF_MARKER, "")
                answer.handoff_reason = answer.handoff_reason or "ai_handed_over"
            keep = _held_tail(held)
            ready, held = held[: len(held) - keep], held[len(held) - keep :]
            if ready:
                yield ready
    if held:
        yield held


def _redacted(request: AnswerRequest) -> AnswerRequest:
    return dataclasses.replace(
        request,
        question=redact(request.question),
        history=[dataclasses.replace(m, content=redact(m.content)) for m in request.history],
        page_url=redact(request.page_url) if request.page_url else None,
        page_title=redact(request.page_title) if request.page_title else None,
    )


class AIEngine:
    def __init__(
        self,
        knowledge: KnowledgeBase,
        default_provider: Provider,
        *,
        provider_for_site: Callable[[Site], Provider | None] | None = None,
        caps: CapChecker | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        someone_can_answer: Callable[[Site], Awaitable[bool]] | None = None,
    ) -> None:
        self.knowledge = knowledge
        self.default_provider = default_provider
        self.caps = caps
        self._provider_for_site = provider_for_site
        self._on_close = on_close
        self._someone_can_answer = someone_can_answer

    def provider(self, site: Site) -> Provider:
        if self._provider_for_site is not None:
            chosen = self._provider_for_site(site)
            if chosen is not None:
                return chosen
        return self.default_provider

    def replies_since(self, site: Site) -> str | None:
        """From when the session's replies count towards its cap (None: no cap): the question's
        transaction counts them, and hands the count to prepare()."""
        return self.caps.replies_since(site) if self.caps else None

    def prepare(self, site: Site, question: str, *, session_id: str | None,
                session_replies: int | None = None, knowledge_version: str | None = None,
                ) -> asyncio.Future[tuple[CapNotice | None, Retrieval]]:
        """Check the caps and retrieve knowledge (at once: they are independent), for
        `answer(prepared=...)`. Given what the question's transaction read (the session's replies
        since replies_since(site), the site's knowledge_version) no store read is left but the
        site's daily cap, if set, and the documents when the index is out of date. Cancel it
        when no answer follows."""
        reads = asyncio.ensure_future(asyncio.gather(
            self._cap_notice(site, session_id, question, session_replies),
            self.knowledge.retrieve(site.id, question, version=knowledge_version)))
        reads.add_done_callback(_retrieved)
        return reads

    async def answer(
        self,
        site: Site,
        question: str,
        *,
        lang: str,
        history: list[Message] | Awaitable[list[Message]],
        page_url: str | None = None,
        page_title: str | None = None,
        session_id: str | None = None,
        prepared: asyncio.Future[tuple[CapNotice | None, Retrieval]] | None = None,
    ) -> Answer:
        """Decide handoff and sources now; the text streams from the returned `chunks`.
        `history` (the conversation before the question) may be an awaitable read still under
        way: it is awaited only when the model is asked. `prepared`: this question's `prepare()`,
        if started already."""
        if asks_for_human(question, ai_setting(site, "handoff_phrases", [])):
            if prepared is not None:
                prepared.cancel()
            # Outside the site's hours (or with nobody online) nobody is coming: ask for an email.
            away = self._someone_can_answer is not None and not await self._someone_can_answer(site)
            return Answer(chunks=_single(pick(AWAY_HANDOFF if away else HANDING_OVER, lang)),
                          handoff_reason="asked_for_person")
        notice, retrieval = await (prepared or self.prepare(site, question, session_id=session_id))
        if notice is not None:
            return Answer(chunks=_single(notice.text(lang)),
                          handoff_reason="cap_reached" if notice.handoff else None, role="system")
        # Only passages that fit the prompt are given, so `sources` are exactly what the model saw.
        passages = fit_passages(retrieval.passages)
        # A greeting or thanks has nothing to be unsure about.
        unsure = (not passages and bool(ai_setting(site, "handoff_when_unsure", False))
                  and small_talk(question) is None)
        request = AnswerRequest(
            site=site,
            question=question,
            lang=lang,
            history=(await history if inspect.isawaitable(history) else history)[-HISTORY_TURNS:],
            passages=passages,
            page_url=page_url,
            page_title=page_title,
            handing_over=unsure,
        )
        if ai_setting(site, "redact_pii", False):
            request = _redacted(request)
        sources = list(dict.fromkeys(p.source for p in passages))
        chunks = relay(lambda: answer, self.provider(site).stream(request))
        answer = Answer(chunks=chunks, sources=sources, handoff_reason="not_covered" if unsure else None,
                        relevance=retrieval.relevance)
        return answer

    async def _cap_notice(self, site: Site, session_id: str | None, question: str,
                          session_replies: int | None = None) -> CapNotice | None:
        if self.caps is None:
            return None
        return await self.caps.check(site, session_id, question, session_replies=session_replies)

    async def close(self) -> None:
        await self.default_provider.close()
        if self._on_close is not None:
            await self._on_close()
