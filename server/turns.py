"""A turn is one AI answer in the making. Any number of SSE streams follow it; the answer is
produced once, by one task, whoever is watching.

When the last follower leaves before the end, the producing task is cancelled, which cancels the
upstream call; the partial text is then stored as `interrupted` by the producer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Literal

from server.errors import ParleyError

EventType = Literal["chunk", "error", "done"]


@dataclass(frozen=True)
class TurnEvent:
    """One step of an answer: a chunk of text, the failure, or the end with its meta.
    handlers/serializers.py gives it its wire shape."""

    type: EventType
    content: str = ""
    error: ParleyError | None = None
    meta: dict[str, Any] | None = None


class Turn:
    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.error: ParleyError | None = None
        self.meta: dict[str, Any] | None = None
        self.producer: asyncio.Task[None] | None = None
        self.on_chunk: Callable[[str], object] | None = None
        self._followers = 0
        self._unfollowed = asyncio.Event()  # set while no stream follows the turn
        self._unfollowed.set()
        self._changed = asyncio.Event()

    @classmethod
    def finished(cls, meta: dict[str, Any], text: str = "") -> Turn:
        """A turn whose answer is already known: a replay, or operator mode with no answer."""
        turn = cls()
        if text:
            turn.chunks.append(text)
        turn.meta = meta
        return turn

    @property
    def done(self) -> bool:
        return self.meta is not None

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def append(self, chunk: str) -> None:
        self.chunks.append(chunk)
        self._notify()
        if self.on_chunk is not None:
            self.on_chunk(chunk)

    def fail(self, error: ParleyError) -> None:
        self.error = error
        self._notify()

    def finish(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self._notify()

    async def follow(self) -> AsyncIterator[TurnEvent]:
        """Every chunk from the first, then `error` (if any) and `done`. Quiet while nothing
        happens: the SSE writer adds keepalives (handlers/sse.py)."""
        async for batch in self.follow_batches():
            for event in batch:
                yield event

    async def follow_batches(self) -> AsyncIterator[list[TurnEvent]]:
        """The same events as `follow`, grouped: each batch is everything that arrived since the
        last one, so a writer that fell behind catches up with one write and one flush."""
        self._followers += 1
        self._unfollowed.clear()
        sent = 0
        try:
            while True:
                changed = self._changed
                batch = [TurnEvent("chunk", content=chunk) for chunk in self.chunks[sent:]]
                sent += len(batch)
                if self.meta is not None:
                    if self.error is not None:
                        batch.append(TurnEvent("error", error=self.error))
                    batch.append(TurnEvent("done", meta=self.meta))
                    yield batch
                    return
                if batch:
                    yield batch
                if changed is self._changed:
                    await changed.wait()
        finally:
            self._followers -= 1
            if self._followers == 0:
                self._unfollowed.set()
                if not self.done and self.producer is not None:
                    self.producer.cancel()

    async def unfollowed(self) -> None:
        """Until every stream following the turn has sent its last event and let go."""
        await self._unfollowed.wait()
