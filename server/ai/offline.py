"""The default answerer: no network, no key. It quotes the site's own knowledge, or says it does not know."""

from __future__ import annotations

import asyncio
import re
from typing import AsyncIterator

from server.ai.base import AnswerRequest, Provider
from server.ai.phrases import DONT_KNOW, DONT_KNOW_PASSED_ON, FOUND_INTRO, pick, small_talk

PIECE_RE = re.compile(r"\*\*[^*\n]{1,200}\*\*\S*\s*|\S+\s*|\s+")


class OfflineAnswerer(Provider):
    name = "offline"

    def __init__(self, *, words_per_chunk: int = 3, chunk_delay: float = 0.02) -> None:
        # A small pace makes the answer read like typing; tests set it to 0.
        self.words_per_chunk = words_per_chunk
        self.chunk_delay = chunk_delay

    def compose(self, request: AnswerRequest) -> str:
        if not request.passages:
            not_known = DONT_KNOW_PASSED_ON if request.handing_over else DONT_KNOW
            return pick(small_talk(request.question) or not_known, request.lang)
        # Each quote under its heading in bold, so it reads on its own (the widget renders Markdown).
        quotes = [f"**{p.source.title}**\n\n{p.text.strip()}" for p in request.passages]
        return "\n\n".join([pick(FOUND_INTRO, request.lang), *quotes])

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        # Split after whitespace so joining the chunks gives back the exact text; a **bold** span
        # is one piece, so the widget never shows its asterisks half-way.
        pieces = PIECE_RE.findall(self.compose(request))
        for start in range(0, len(pieces), self.words_per_chunk):
            if start and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield "".join(pieces[start : start + self.words_per_chunk])
