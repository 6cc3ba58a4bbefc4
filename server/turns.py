"""A turn is one AI answer in the making. Any number of SSE streams follow it; the answer is
produced once, by one task, whoever is watching.

A stream either pulls (`follow_batches`: woken after each change, it takes what is new) or is
pushed to (`push_to`: each event is handed to it at once, in the producing task). Pushing costs no
wake-up of the stream's task per chunk, which is most of what a chunk costs when many answers stream.

When the last follower leaves before the end and none comes back within ABANDONED_AFTER_SECONDS,
the producing task is cancelled, which cancels the upstream call; the partial text is then stored
as `interrupted` by the producer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Literal

from server.errors import ParleyError

EventType = Literal["chunk", "error", "done"]
# A stream that drops mid-answer is most often a network blip: the widget asks again with the same
# message_id within seconds, and follows the answer where it is. Only an answer nobody came back to
# in this long is cut, to spare the model's time (one cut-off answer and a new one per blip, before).
ABANDONED_AFTER_SECONDS = 10.0


@dataclass(slots=True)
class TurnEvent:
    """One step of an answer: a chunk of text, the failure, or the end with its meta.
    handlers/serializers.py gives it its wire shape. Never changed once made (every follower is
    handed the same one); not `frozen`, whose __init__ costs three times as much, for every token."""

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
        # Made when a puller waits, not on every chunk: most streams are pushed to.
        self._changed: asyncio.Event | None = None
        self._listeners: list[Callable[[list[TurnEvent]], None]] = []
        self._ended: asyncio.Future[None] | None = None
        self._abandoning: asyncio.TimerHandle | None = None

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
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _push(self, batch: list[TurnEvent]) -> None:
        for deliver in list(self._listeners):
            deliver(batch)

    def _ending(self) -> list[TurnEvent]:
        assert self.meta is not None
        ending = [TurnEvent("error", error=self.error)] if self.error is not None else []
        return ending + [TurnEvent("done", meta=self.meta)]

    def append(self, chunk: str) -> None:
        self.chunks.append(chunk)
        self._notify()
        if self._listeners:
            self._push([TurnEvent("chunk", content=chunk)])
        if self.on_chunk is not None:
            self.on_chunk(chunk)

    def fail(self, error: ParleyError) -> None:
        self.error = error
        self._notify()

    def finish(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        if self._abandoning is not None:
            self._abandoning.cancel()
            self._abandoning = None
        self._notify()
        if self._listeners:
            self._push(self._ending())
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def push_to(self, deliver: Callable[[list[TurnEvent]], None]) -> None:
        """Hand `deliver` every event from the first (what exists now at once, in one list), then
        each as it happens, synchronously in the producing task; return after `done`. `deliver`
        must not block or raise. Cancelled (the stream's client left), it lets go of the turn."""
        self._follow()
        try:
            backlog = [TurnEvent("chunk", content=chunk) for chunk in self.chunks]
            if self.meta is not None:
                deliver(backlog + self._ending())
                return
            if backlog:
                deliver(backlog)
            if self._ended is None:
                self._ended = asyncio.get_running_loop().create_future()
            self._listeners.append(deliver)
            await asyncio.shield(self._ended)
        finally:
            if deliver in self._listeners:
                self._listeners.remove(deliver)
            self._unfollow()

    def _follow(self) -> None:
        self._followers += 1
        self._unfollowed.clear()
        if self._abandoning is not None:  # back in time: the answer goes on
            self._abandoning.cancel()
            self._abandoning = None

    def _unfollow(self) -> None:
        self._followers -= 1
        if self._followers == 0:
            self._unfollowed.set()
            if not self.done and self.producer is not None:
                if ABANDONED_AFTER_SECONDS > 0:
                    self._abandon_later()
                else:
                    self.producer.cancel()

    def _abandon_later(self) -> None:
        self._abandoning = asyncio.get_running_loop().call_later(ABANDONED_AFTER_SECONDS, self._abandon)

    @property
    def abandoning(self) -> bool:
        """Nobody here follows the answer any more: it is cut unless someone comes back."""
        return self._abandoning is not None

    def followed_elsewhere(self) -> None:
        """A retry on another process waits for this answer: it goes on as if followed here, for
        ABANDONED_AFTER_SECONDS more."""
        if self._abandoning is not None:
            self._abandoning.cancel()
            self._abandon_later()

    def _abandon(self) -> None:
        self._abandoning = None
        if self._followers == 0 and not self.done and self.producer is not None:
            self.producer.cancel()

    async def follow(self) -> AsyncIterator[TurnEvent]:
        """Every chunk from the first, then `error` (if any) and `done`. Quiet while nothing
        happens: the SSE writer adds keepalives (handlers/sse.py)."""
        async for batch in self.follow_batches():
            for event in batch:
                yield event

    async def follow_batches(self) -> AsyncIterator[list[TurnEvent]]:
        """The same events as `follow`, grouped: each batch is everything that arrived since the
        last one, so a writer that fell behind catches up with one write and one flush."""
        self._follow()
        sent = 0
        try:
            while True:
                if self._changed is None:
                    self._changed = asyncio.Event()
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
            self._unfollow()

    async def unfollowed(self) -> None:
        """Until every stream following the turn has sent its last event and let go."""
        await self._unfollowed.wait()
