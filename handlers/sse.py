"""Server-Sent Events: the headers, the framing, and the keepalive loop, for every stream we send
(the widget's answer stream, the dashboard's live feed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, TypeVar

from handlers.base import JsonHandler, dumps

T = TypeVar("T")

KEEPALIVE = object()  # what `with_keepalive` yields when its source has been quiet too long


async def with_keepalive(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | object]:
    """Yield what `source` yields, and KEEPALIVE whenever it says nothing for `interval` seconds.

    The source is never cancelled by a keepalive: its pending step keeps running across them. When
    this generator is closed or cancelled, the source is cancelled and closed with it.
    """
    step: asyncio.Future[T] | None = None
    try:
        while True:
            if step is None:
                step = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait((step,), timeout=interval)
            if not done:
                yield KEEPALIVE
                continue
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            finally:
                step = None
            yield item
    finally:
        if step is not None and not step.done():
            step.cancel()
            await asyncio.wait((step,))
        if hasattr(source, "aclose"):
            await source.aclose()


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

    async def send_events(self, events: AsyncIterator[Any], frame: Any) -> None:
        """Flush the headers, then `frame(event)` each event of `events` (frame writes it) until the
        source ends or the client leaves. The source is closed either way."""
        if not await self.safe_flush():
            with contextlib.suppress(AttributeError):
                await events.aclose()  # type: ignore[attr-defined]
            return
        async with contextlib.aclosing(with_keepalive(events, self.keepalive_interval)) as stream:
            async for event in stream:
                if event is KEEPALIVE:
                    self.write(": keepalive\n\n")
                else:
                    frame(event)
                if not await self.safe_flush():
                    return
