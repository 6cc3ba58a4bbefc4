"""Liveness and readiness probes for supervisors and load balancers."""

from __future__ import annotations

import asyncio
import os

import tornado.web

from server.feed import EventFeed
from server.hub import Hub
from server.store.base import Store, StoreUnavailable
from server.uploads import Uploads


class HealthHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        # The pid tells which of several processes answered; `held`, how many waits it holds.
        self.write({"status": "ok", "pid": os.getpid(), "held": self.hub.subscriber_count})


class ReadyHandler(tornado.web.RequestHandler):
    def initialize(self, store: Store, feed: EventFeed, uploads: Uploads) -> None:
        self.store = store
        self.feed = feed
        self.uploads = uploads

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            await self.store.ping()
            store = "ok"
        except StoreUnavailable:
            store = "unreachable"
        # A process that cannot hear the others would leave its held visitors waiting.
        feed = "ok" if self.feed.healthy else "down"
        # Uploads are spooled under the data directory: a full or read-only disk fails them all.
        disk = "ok" if await asyncio.to_thread(self.uploads.can_write) else "not writable"
        ready = store == "ok" and feed == "ok" and disk == "ok"
        self.set_status(200 if ready else 503)
        self.write({"status": "ok" if ready else "unavailable", "store": store, "events": feed,
                    "disk": disk})
