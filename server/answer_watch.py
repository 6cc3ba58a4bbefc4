"""Operators watching an AI answer as it is made, whichever process makes it.

Each chunk goes at once to this process's dashboards (`chunk`, with its offset in the answer). Other
processes hear a snapshot of the whole text so far (`answer_progress`), recorded in the events feed
at most every PROGRESS_EVERY seconds: a few rows per answer rather than one per token, and a
snapshot replayed after a reconnect is harmless (the page keeps the longest text it has seen).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from server.hub import Hub, site_topic
from server.turns import Turn
from server.visitor import Visitor

PROGRESS_EVERY = 0.5
PROGRESS_MAX_CHARS = 20_000


class AnswerWatch:
    def __init__(self, hub: Hub, turn: Turn, visitor: Visitor, reply_to: str) -> None:
        self.hub = hub
        self.turn = turn
        self.topic = site_topic(visitor.site.id)
        self.about: dict[str, Any] = {"site_id": visitor.site.id, "session_id": visitor.session_id,
                                      "reply_to": reply_to}
        self._length = 0
        self._last_snapshot = time.monotonic()
        self._snapshot: asyncio.Task[None] | None = None

    def chunk(self, text: str) -> None:
        self.hub.deliver_local(self.topic, {"kind": "chunk", **self.about, "content": text,
                                            "offset": self._length})
        self._length += len(text)
        now = time.monotonic()
        if now - self._last_snapshot >= PROGRESS_EVERY and (self._snapshot is None or self._snapshot.done()):
            self._last_snapshot = now
            self._snapshot = asyncio.create_task(self._record(), name="answer-progress")

    async def _record(self) -> None:
        if not self.turn.done:  # the stored answer says the rest
            await self.hub.publish(self.topic, "answer_progress",
                                   {**self.about, "text": self.turn.text[:PROGRESS_MAX_CHARS]})
