"""The AI engine: retrieval, the handoff rule, and the provider that writes the words."""

from __future__ import annotations

from typing import AsyncIterator, Callable

from server.ai.base import Answer, AnswerRequest, Provider
from server.ai.knowledge import KnowledgeBase
from server.ai.phrases import HANDING_OVER, asks_for_human, pick
from server.store.models import Message, Site

HISTORY_TURNS = 12


async def _single(text: str) -> AsyncIterator[str]:
    yield text


class AIEngine:
    def __init__(
        self,
        knowledge: KnowledgeBase,
        default_provider: Provider,
        *,
        provider_for_site: Callable[[Site], Provider | None] | None = None,
    ) -> None:
        self.knowledge = knowledge
        self.default_provider = default_provider
        self._provider_for_site = provider_for_site

    def provider(self, site: Site) -> Provider:
        if self._provider_for_site is not None:
            chosen = self._provider_for_site(site)
            if chosen is not None:
                return chosen
        return self.default_provider

    async def answer(
        self,
        site: Site,
        question: str,
        *,
        lang: str,
        history: list[Message],
        page_url: str | None = None,
        page_title: str | None = None,
    ) -> Answer:
        """Decide handoff and sources now; the text streams from the returned `chunks`.

        The rule: a visitor who asks for a person is handed over at once. A question with no
        relevant knowledge is answered with "I don't know" and, where the site says
        `handoff_when_unsure`, handed over too.
        """
        if asks_for_human(question, site.setting("handoff_phrases", [])):
            return Answer(chunks=_single(pick(HANDING_OVER, lang)), handoff=True)
        passages = await self.knowledge.search(site.id, question)
        request = AnswerRequest(
            site=site,
            question=question,
            lang=lang,
            history=history[-HISTORY_TURNS:],
            passages=passages,
            page_url=page_url,
            page_title=page_title,
        )
        sources = list(dict.fromkeys(p.source for p in passages))
        handoff = not passages and bool(site.setting("handoff_when_unsure", False))
        return Answer(chunks=self.provider(site).stream(request), sources=sources, handoff=handoff)

    async def close(self) -> None:
        await self.default_provider.close()
