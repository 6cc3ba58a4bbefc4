"""Server-Sent Events: the headers, the framing, and one way of writing for every stream we send
(the widget's answer stream, the dashboard's live feed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from handlers.base import JsonHandler, dumps

log = logging.getLogger(__name__)

# What a stream may hold for a client that does not read, in characters, before it is cut off.
MAX_QUEUED = 4 * 1024 * 1024


def event_text(data: dict[str, Any] | str, *, event_id: int | None = None, name: str | None = None) -> str:
    """One SSE frame; `data` a dict to encode, or JSON already encoded."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    if name:
        head += f"event: {name}\n"
    return f"{head}data: {data if isinstance(data, str) else dumps(data)}\n\n"


class Pusher:
    """Writes events to a stream as they are handed over, from whichever task produces them (no
    wake-up of the request's own task per event), with one flush in flight at a time: what comes
    meanwhile is queued and goes out in one send when that flush completes. Nobody waits for the
    client. One that falls more than MAX_QUEUED characters behind is disconnected, and its
    EventSource reconnects and catches up from the store.

    A quiet stream gets `: keepalive` from one timer, re-armed only when it fires: a busy stream
    pays nothing per event for it.

    One flush at a time because Tornado's connection resolves only its latest write's future, and
    resolves it when the oldest write completes.
    """

    def __init__(self, handler: JsonHandler, frame: Callable[[Any], str], *, keepalive: float) -> None:
        self.handler = handler
        self.frame = frame
        self.keepalive = keepalive
        self.stopped = False
        self._loop = asyncio.get_running_loop()
        self._queued: list[str] = []
        self._queued_size = 0
        self._flushing: asyncio.Future[None] | None = None
        self._last_sent = self._loop.time()
        self._timer = self._loop.call_later(keepalive, self._tick)

    def deliver(self, events: list[Any]) -> None:
        """Frame `events` and send them, or queue them behind the flush in flight. Never blocks
        or raises."""
        if self.stopped or self.handler.client_left():
            return
        for event in events:
            text = self.frame(event)
            self._queued.append(text)
            self._queued_size += len(text)
        if not self._queued:
            return
        if self._flushing is None:
            self._send()
        elif self._queued_size > MAX_QUEUED:
            self._cut_off()

    def _send(self) -> None:
        self.handler.write("".join(self._queued))
        self._queued.clear()
        self._queued_size = 0
        self._flushing = flushing = self.handler.flush()
        flushing.add_done_callback(self._sent)
        self._last_sent = self._loop.time()

    def _sent(self, flushed: asyncio.Future[None]) -> None:
        self._flushing = None
        if flushed.cancelled() or flushed.exception() is not None:  # StreamClosedError: the client left
            self.stopped = True
        elif self._queued and not self.stopped and not self.handler.client_left():
            self._send()

    def _cut_off(self) -> None:
        log.warning("%s %s: the client fell %d characters behind; disconnected (it reconnects and "
                    "catches up)", self.handler.request.method, self.handler.request.path, self._queued_size)
        self.stop(keep_queued=False)
        # The stream, not the connection: closing the connection would skip on_connection_close,
        # which ends the request's hold.
        stream = getattr(self.handler.request.connection, "stream", None)
        if stream is not None:
            stream.close()

    def _tick(self) -> None:
        quiet = self._loop.time() - self._last_sent
        if self._flushing is not None or quiet < self.keepalive:
            self._timer = self._loop.call_later(max(0.01, self.keepalive - quiet), self._tick)
            return
        if not self.handler.client_left():
            self._queued.append(": keepalive\n\n")
            self._send()
        self._timer = self._loop.call_later(self.keepalive, self._tick)

    def stop(self, *, keep_queued: bool = True) -> None:
        """No more events; what is queued is left in the handler's buffer for its finish()."""
        self.stopped = True
        self._timer.cancel()
        if keep_queued and self._queued and not self.handler.client_left():
            self.handler.write("".join(self._queued))
        self._queued.clear()
        self._queued_size = 0


class EventStreamMixin(JsonHandler):
    """Send an SSE stream: headers at once, then each event sent as it comes, with `: keepalive`
    comments on a quiet stream so proxies keep the connection."""

    @property
    def keepalive_interval(self) -> float:
        return float(self.settings.get("sse_keepalive", 15.0))

    def start_event_stream(self) -> None:
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def send_pushed(self, source: Callable[[Callable[[list[Any]], None]], Awaitable[None]],
                          frame: Callable[[Any], str]) -> None:
        """Flush the headers, then run `source(deliver)`, which hands `deliver` lists of events as
        they happen, each event framed by `frame` (see Pusher). Ends when `source` returns (after
        the last event), or when the client leaves (hold() then cancels `source`)."""
        if not await self.safe_flush():
            return
        pusher = Pusher(self, frame, keepalive=self.keepalive_interval)
        try:
            await source(pusher.deliver)
        finally:
            pusher.stop()

    async def send_batches(self, source: Callable[[Callable[[list[Any]], None]], AsyncIterator[list[Any]]],
                           frame: Callable[[Any], str]) -> None:
        """Flush the headers, then send each list of events the iterator `source(deliver)` yields,
        and whatever its producers hand `deliver` meanwhile, until the iterator ends or the client
        leaves. The iterator is closed either way."""
        if not await self.safe_flush():
            return
        pusher = Pusher(self, frame, keepalive=self.keepalive_interval)
        try:
            async with contextlib.aclosing(source(pusher.deliver)) as batches:  # type: ignore[type-var]
                async for batch in batches:
                    pusher.deliver(batch)
                    if pusher.stopped:
                        return
        finally:
            pusher.stop()
