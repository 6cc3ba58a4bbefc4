"""Operators watching an AI answer as it is made, whichever process makes it.

Each chunk goes at once to this process's dashboards (`chunk`, with its offset in the answer), when
any is open. Other processes hear a snapshot of the whole text so far (`answer_progress`), recorded
in the events feed at most every PROGRESS_EVERY seconds: a few rows per answer rather than one per
token, and a snapshot replayed after a reconnect is harmless (the page keeps the longest text it has
seen). Snapshots are recorded only while an operator who may answer the site is online (`watched`,
asked of the store at most every WATCHED_CHECK_SECONDS per site): with nobody to watch, an answer
costs the store no write until it is stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from server.errors import Unavailable
from server.hub import Hub, site_topic
from server.turns import Turn
from server.visitor import Visitor

PROGRESS_EVERY = 0.5
PROGRESS_MAX_CHARS = 20_000


class AnswerWatch:
    def __init__(self, hub: Hub, turn: Turn, visitor: Visitor, reply_to: str,
                 watched: Callable[[], Awaitable[bool]]) -> None:
        self.hub = hub
        self.watched = watched
        self.turn = turn
        self.topic = site_topic(visitor.site.id)
        self.about: dict[str, Any] = {"site_id": visitor.site.id, "session_id": visitor.session_id,
                                      "reply_to": reply_to}
        self._length = 0
        self._last_snapshot = time.monotonic()
        self._snapshot: asyncio.Task[None] | None = None

    def chunk(self, text: str) -> None:
        if self.hub.waiting_on(self.topic):
            self.hub.deliver_local(self.topic, {"kind": "chunk", **self.about, "content": text,
                                                "offset": self._length})
        self._length += len(text)
        now = time.monotonic()
        if now - self._last_snapshot >= PROGRESS_EVERY and (self._snapshot is None or self._snapshot.done()):
            self._last_snapshot = now
            self._snapshot = asyncio.create_task(self._record(), name="answer-progress")

    async def _record(self) -> None:
        if not self.turn.done and await self.watched():  # the stored answer says the rest
            await self.hub.publish(self.topic, "answer_progress",
                                   {**self.about, "text": self.turn.text[:PROGRESS_MAX_CHARS]})


WATCHED_CHECK_SECONDS = 10.0


class Watchers:
    """Whether an operator who may answer a site is online, per site, asked of the store at most
    every WATCHED_CHECK_SECONDS (one small read, however many answers stream)."""

    def __init__(self, online: Callable[[int], Awaitable[bool]], *, max_sites: int = 1024) -> None:
        self.online = online
        self.max_sites = max_sites
        self._known: dict[int, tuple[float, bool]] = {}

    async def watching(self, site_id: int) -> bool:
        now = time.monotonic()
        known = self._known.get(site_id)
        if known is not None and now - known[0] < WATCHED_CHECK_SECONDS:
            return known[1]
        try:
            answer = await self.online(site_id)
        except Unavailable:
            answer = True  # cannot tell: keep the dashboards elsewhere informed
        if len(self._known) >= self.max_sites:
            self._known.clear()
        self._known[site_id] = (now, answer)
        return answer
