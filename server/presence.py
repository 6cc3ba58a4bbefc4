"""Visitors' presence (when last seen, which page, which browser), written in batches.

Every visitor with the widget open writes its presence every 30 s, so 10,000 visitors online are
333 small writes a second, each a transaction of its own on the one SQLite writer. With 1,000
operator messages a second on top, the writer fell behind and the messages queued behind it
(p99 over a second). Here presence is noted in memory and written once a second, all of it in one
store call with the "seen" events of visitors who just arrived, as Zulip batches user activity.

Presence is a nicety: a batch the store refuses is logged and dropped; the visitor's next read
30 s later writes it again. Operators hear of a new arrival up to a second later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.errors import Unavailable
from server.hub import Hub
from server.store.base import Events, Store

log = logging.getLogger(__name__)

BATCH_SECONDS = 1.0
MAX_PENDING = 5000  # conversations noted before a batch goes at once
ONLINE_SECONDS = 120  # seen this recently: online (the widget writes presence every 30 s)


def is_online(last_seen_at: float | None, now: float) -> bool:
    return last_seen_at is not None and now - last_seen_at <= ONLINE_SECONDS


class PresenceWriter:
    def __init__(self, store: Store, hub: Hub, *, batch_seconds: float = BATCH_SECONDS) -> None:
        self.store = store
        self.hub = hub
        self.batch_seconds = batch_seconds
        self._changes: dict[int, dict[str, Any]] = {}
        self._events: Events = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._changes)

    def note(self, conversation_id: int, changes: dict[str, Any], events: Events | None = None) -> None:
        """Write `changes` to the conversation and record `events`, with the next batch."""
        self._changes.setdefault(conversation_id, {}).update(changes)
        if events:
            self._events.extend(events)
        if len(self._changes) >= MAX_PENDING:
            self._write_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.batch_seconds, self._write_now)

    def _write_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def flush(self) -> None:
        """Write what is noted so far (and wait for batches already on their way)."""
        changes, events = self._changes, self._events
        self._changes, self._events = {}, []
        if changes:
            try:
                await self.store.write_presence(changes, events=events, origin=self.hub.origin)
            except Unavailable as exc:
                log.warning("presence of %d visitor(s) not written: %s", len(changes), exc)
            else:
                self.hub.deliver_recorded(events)
        others = self._writing - {asyncio.current_task()}
        if others:
            await asyncio.gather(*others, return_exceptions=True)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()
