"""Server-Sent Events: the headers, the framing, and the keepalive loop, for every stream we send
(the widget's answer stream, the dashboard's live feed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable

from handlers.base import JsonHandler, dumps


class Keepalive:
    """`: keepalive` on a quiet stream from one timer, re-armed only when it fires: a busy stream
    pays nothing per event (a timeout per event costs a timer handle each, a wait task more).

    Tornado keeps one flush at a time, so the timer never flushes while the writer does, and the
    writer waits for a keepalive's flush (`settled`) before its own.
    """

    def __init__(self, handler: JsonHandler, interval: float, *, await_flush: bool = True) -> None:
        self.handler = handler
        self.interval = interval
        # False when the writer never waits for its flushes (send_pushed): then neither does this.
        self.await_flush = await_flush
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
        if self.await_flush:
            self.pending = asyncio.ensure_future(self.handler.safe_flush())
            self.pending.add_done_callback(self._flushed)
        elif not self.handler.client_left():
            self.handler.flush()
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

    async def send_pushed(self, source: Callable[[Callable[[list[Any]], None]], Awaitable[None]],
                          frame: Callable[[Any], None]) -> None:
        """Flush the headers, then run `source(deliver)`, which hands `deliver` lists of events as
        they happen (in the producing task: no wake-up of this request's task per event). Each
        list is framed and flushed at once, without waiting for the flush: Tornado keeps what a
        slow client has not read yet. Ends when `source` returns (after the last event), or when
        the client leaves (hold() then cancels `source`)."""
        if not await self.safe_flush():
            return
        keepalive = Keepalive(self, self.keepalive_interval, await_flush=False)
        flush_due = False

        def flush() -> None:
            nonlocal flush_due
            flush_due = False
            if not self.client_left():
                self.flush()  # a flush not awaited never raises: Tornado retrieves its exception
            keepalive.last_sent = keepalive.loop.time()

        def deliver(events: list[Any]) -> None:
            nonlocal flush_due
            if self.client_left():
                return
            for event in events:
                frame(event)
            if not flush_due:  # events handed over in the same turn of the loop go out in one send
                flush_due = True
                keepalive.loop.call_soon(flush)

        try:
            await source(deliver)
        finally:
            keepalive.stop()
