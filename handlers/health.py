"""Liveness and readiness probes for supervisors and load balancers."""

from __future__ import annotations

import os

import tornado.web

from server.store.base import Store, StoreUnavailable


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        # The pid tells which of several processes answered.
        self.write({"status": "ok", "pid": os.getpid()})


class ReadyHandler(tornado.web.RequestHandler):
    def initialize(self, store: Store) -> None:
        self.store = store

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            await self.store.ping()
        except StoreUnavailable:
            self.set_status(503)
            self.write({"status": "unavailable", "store": "unreachable"})
            return
        self.write({"status": "ok", "store": "ok"})
