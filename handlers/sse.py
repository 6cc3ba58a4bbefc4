"""Server-Sent Events: the headers, the framing, and the keepalive loop, for every stream we send
(the widget's answer stream, the dashboard's live feed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable

from handlers.base import JsonHandler, dumps


class Keepalive:
    """`: keepalive` on a quiet stream from one timer, re-armed only when it fires: a busy stream
    pays nothing per event (a timeout per event costs a timer handle each, a wait task more).

    Tornado keeps one flush at a time, so the timer never flushes while the writer does, and the
    writer waits for a keepalive's flush (`settled`) before its own.
    """

    def __init__(self, handler: JsonHandler, interval: float) -> None:
        self.handler = handler
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.last_sent = self.loop.time()
        self.writing = False
        self.pending: asyncio.Future[None] | None = None
        self.timer = self.loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        quiet = self.loop.time() - self.last_sent
        if self.writing or self.pending is not None or quiet < self.interval:
            self.timer = self.loop.call_later(max(0.01, self.interval - quiet), self._tick)
            return
        self.handler.write(": keepalive\n\n")
        self.pending = asyncio.ensure_future(self.handler.safe_flush())
        self.pending.add_done_callback(self._flushed)
        self.last_sent = self.loop.time()
        self.timer = self.loop.call_later(self.interval, self._tick)

    def _flushed(self, future: asyncio.Future[None]) -> None:
        self.pending = None

    async def settled(self) -> None:
        if self.pending is not None:
            await asyncio.wait((self.pending,))

    def stop(self) -> None:
        self.timer.cancel()


class EventStreamMixin(JsonHandler):
    """Send an SSE stream: headers at once, then each event flushed as it comes, with `: keepalive`
    comments on a quiet stream so proxies keep the connection."""

    @property
    def keepalive_interval(self) -> float:
        return float(self.settings.get("sse_keepalive", 15.0))

    def start_event_stream(self) -> None:
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    def write_event(self, data: dict[str, Any], *, event_id: int | None = None,
                    name: str | None = None) -> None:
        head = f"id: {event_id}\n" if event_id is not None else ""
        if name:
            head += f"event: {name}\n"
        self.write(f"{head}data: {dumps(data)}\n\n")

    async def send_batches(self, batches: AsyncIterator[list[Any]],
                           frame: Callable[[Any], None]) -> None:
        """Flush the headers, then `frame(event)` each event of each list `batches` yields, flushing
        once per list, until the source ends or the client leaves. The source is closed either way."""
        async with contextlib.aclosing(batches):  # type: ignore[type-var]
            if not await self.safe_flush():
                return
            keepalive = Keepalive(self, self.keepalive_interval)
            try:
                async for batch in batches:
                    await keepalive.settled()
                    for event in batch:
                        frame(event)
                    keepalive.writing = True
                    flushed = await self.safe_flush()
                    keepalive.writing = False
                    keepalive.last_sent = keepalive.loop.time()
                    if not flushed:
                        return
            finally:
                keepalive.stop()
