"""Liveness and readiness probes for supervisors and load balancers."""

from __future__ import annotations

import os

import tornado.web

from server.hub import Hub
from server.readiness import Readiness


class HealthHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        # The pid tells which of several processes answered; `held`, how many waits it holds.
        self.write({"status": "ok", "pid": os.getpid(), "held": self.hub.subscriber_count})


class ReadyHandler(tornado.web.RequestHandler):
    def initialize(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        report = await self.readiness.report()
        self.set_status(200 if report["status"] == "ok" else 503)
        self.write(report)
