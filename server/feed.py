"""How a process hears the events other processes record (the CLI, other servers, other machines).

Every write publishes to this process's hub at once and records an event in the store; a feed
brings the other processes' events to this hub. Two kinds:

- PollingFeed reads the events table while someone here waits (SQLite; MongoDB without change
  streams), every poll interval and, on SQLite, as soon as another process rings after a write
  (server/store/doorbell.py). An idle server costs nothing.
- ChangeStreamFeed is pushed each event by the database (a MongoDB change stream), keeps the resume
  token, and reopens with backoff after an error or a primary switch, so nothing falls in between.

A feed that cannot read says so through `healthy`, which /readyz reports: a process whose feed is down
would keep held visitors waiting for replies it cannot hear.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Protocol

from server.store.base import Store, StoreUnavailable
from server.store.models import Event

log = logging.getLogger(__name__)

GAP_SECONDS = 5.0  # how long an id skipped by the polling feed may still turn up
RUNG_GAP = 0.005  # between two reads of the events table when other processes ring
MAX_GAPS = 1000
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


class Deliverer(Protocol):
    """The hub, as a feed sees it."""

    origin: str
    bridge: Any

    @property
    def listening(self) -> bool: ...

    def deliver_local(self, topic: str, event: dict[str, Any]) -> int: ...


class EventStream(Protocol):
    """A push feed opened by a store (MongoStore.watch_events)."""

    async def next_batch(self) -> list[Event]:
        """The next events (may be none after a short wait); raises StoreUnavailable."""

    async def close(self) -> None: ...

    @property
    def resume_token(self) -> Any: ...


class EventFeed(abc.ABC):
    def __init__(self, hub: Deliverer) -> None:
        self.hub = hub
        self._failing_since: float | None = None
        hub.bridge = self  # the hub starts the feed when someone subscribes

    @property
    def healthy(self) -> bool:
        """False while the feed cannot read: this process would not hear other processes."""
        return self._failing_since is None

    def _deliver(self, event: Event) -> None:
        self.hub.deliver_local(event.topic, {"kind": event.kind, **event.payload})

    def _failed(self, exc: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("the events feed is down: %s", exc)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("the events feed is back after %.1f s", time.monotonic() - self._failing_since)
            self._failing_since = None

    @abc.abstractmethod
    async def ensure_running(self) -> None:
        """Start if needed; on return, every event recorded from now on will be delivered."""

    @abc.abstractmethod
    async def stop(self) -> None: ...


class PollingFeed(EventFeed):
    """Reads the events table at most every `interval` seconds, only while this process has
    subscribers.

    Ids that MongoDB hands out from a counter can commit out of order (id 11 visible before 10), so
    an id skipped over is remembered for a few seconds and looked for again.
    """

    def __init__(self, hub: Deliverer, store: Store, *, interval: float = 0.1, batch: int = 500) -> None:
        super().__init__(hub)
        self.store = store
        self.interval = interval
        self.batch = batch
        self._cursor = 0
        self._gaps: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        async with self._starting:
            if self._task is not None and not self._task.done():
                return
            # Read the cursor before the subscriber reads the store, so nothing falls between.
            self._cursor = await self.store.latest_event_id()
            self._gaps.clear()
            self._task = asyncio.create_task(self._tail(), name="events-poll")

    async def _tail(self) -> None:
        while self.hub.listening:
            started = time.monotonic()
            try:
                events = await self._read()
            except StoreUnavailable as exc:
                self._failed(exc)
                events = []
            else:
                self._recovered()
            for event in events:
                self._deliver(event)
            if len(events) < self.batch:
                await self._pause(started)
        self._recovered()  # nobody listens: nothing to be unhealthy about

    async def _pause(self, started: float) -> None:
        """Until the next read: `interval` after this one began, or sooner when another process
        rings (SQLite, see server/store/doorbell.py), but not sooner than RUNG_GAP: under a burst
        of rings one read takes in the events of many."""
        if await self.store.wait_for_news(max(0.0, self.interval - (time.monotonic() - started))):
            await asyncio.sleep(max(0.0, RUNG_GAP - (time.monotonic() - started)))

    async def _read(self) -> list[Event]:
        if self.store.event_ids_commit_in_order:
            return await self._read_in_order()
        # Our own events are read too (and skipped), so that every id is either seen or a gap.
        rows = await self.store.events_since(self._cursor, exclude_origin="", limit=self.batch)
        now = time.monotonic()
        while self._gaps and (next(iter(self._gaps.values())) < now or len(self._gaps) > MAX_GAPS):
            self._gaps.popitem(last=False)
        if self._gaps:
            rows = await self.store.events_by_id(list(self._gaps)) + rows
        fresh = []
        for event in rows:
            if event.id in self._gaps:
                del self._gaps[event.id]
            elif event.id > self._cursor:
                # Ids skipped over are not committed yet (or never will be): look again for a while.
                for missing in range(self._cursor + 1, min(event.id, self._cursor + 1 + MAX_GAPS)):
                    self._gaps[missing] = now + GAP_SECONDS
                self._cursor = event.id
            else:
                continue
            if event.origin != self.hub.origin:
                fresh.append(event)
        return fresh

    async def _read_in_order(self) -> list[Event]:
        """Where no id is visible before a smaller one (SQLite), only other processes' events are
        read: this process's own (most of them, when its operators write) never leave the store.
        The latest id is read first: every id up to it is committed by then, so once the events
        after the cursor are all read, the cursor can move past our own events up to it."""
        events, latest = await self.store.events_and_latest(self._cursor, exclude_origin=self.hub.origin,
                                                            limit=self.batch)
        if events:
            self._cursor = events[-1].id
        if len(events) < self.batch:
            self._cursor = max(self._cursor, latest)
        return events

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ChangeStreamFeed(EventFeed):
    """Pushed every event by the database. Once started it keeps listening (an idle change stream
    costs one cheap getMore a second); after an error it reopens from its resume token with backoff.
    When the server offers no change streams it falls back to polling."""

    def __init__(self, hub: Deliverer, store: Any, *, poll_interval: float = 0.1) -> None:
        super().__init__(hub)
        self.store = store  # a store with watch_events (MongoStore)
        self._fallback = PollingFeed(hub, store, interval=poll_interval)
        hub.bridge = self  # the fallback registered itself first
        self._polling = False
        self._stream: EventStream | None = None
        self._resume_token: Any = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        return self._fallback.healthy if self._polling else super().healthy

    async def ensure_running(self) -> None:
        if self._polling:
            return await self._fallback.ensure_running()
        if self._task is not None and not self._task.done():
            return
        async with self._starting:
            if self._task is not None and not self._task.done():
                return
            stream = await self.store.watch_events(exclude_origin=self.hub.origin)
            if stream is None:
                log.warning("this MongoDB server offers no change streams (not a replica set?): "
                            "polling the events collection instead")
                self._polling = True
                return await self._fallback.ensure_running()
            self._stream = stream
            self._task = asyncio.create_task(self._listen(), name="events-change-stream")

    async def _listen(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:  # the driver may swallow a cancel in the middle of a getMore
            stream = self._stream
            try:
                if stream is None:
                    stream = self._stream = await self.store.watch_events(
                        exclude_origin=self.hub.origin, resume_after=self._resume_token)
                    if stream is None:
                        raise StoreUnavailable("change streams are no longer offered")
                events = await stream.next_batch()
            except StoreUnavailable as exc:
                self._failed(exc)
                await self._drop_stream()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._recovered()
            backoff = BACKOFF_FIRST
            for event in events:
                self._deliver(event)

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._resume_token = stream.resume_token or self._resume_token
            with contextlib.suppress(StoreUnavailable):
                await stream.close()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_stream()
        await self._fallback.stop()


def build_feed(hub: Deliverer, store: Store, *, poll_interval: float) -> EventFeed:
    if hasattr(store, "watch_events"):
        return ChangeStreamFeed(hub, store, poll_interval=poll_interval)
    return PollingFeed(hub, store, interval=poll_interval)
