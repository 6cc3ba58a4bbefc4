"""Liveness and readiness probes for supervisors and load balancers."""

from __future__ import annotations

import os

import tornado.web

from server.feed import EventFeed
from server.hub import Hub
from server.store.base import Store, StoreUnavailable


class HealthHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        # The pid tells which of several processes answered; `held`, how many waits it holds.
        self.write({"status": "ok", "pid": os.getpid(), "held": self.hub.subscriber_count})


class ReadyHandler(tornado.web.RequestHandler):
    def initialize(self, store: Store, feed: EventFeed) -> None:
        self.store = store
        self.feed = feed

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            await self.store.ping()
            store = "ok"
        except StoreUnavailable:
            store = "unreachable"
        # A process that cannot hear the others would leave its held visitors waiting.
        feed = "ok" if self.feed.healthy else "down"
        ready = store == "ok" and feed == "ok"
        self.set_status(200 if ready else 503)
        self.write({"status": "ok" if ready else "unavailable", "store": store, "events": feed})
