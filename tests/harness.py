"""A real Parley server on an unused port, in the test's own event loop, with an HTTP client."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import httpx_sse
import tornado.httpserver
import tornado.testing

from argon2 import PasswordHasher, profiles

from handlers.body_limit import DEFAULT_BODY_LIMIT
from server.accounts import AccountService
from server.app import ParleyApplication, Services, build_services, make_app
from server.chat import Limits
from server.config import Config
from server.store.models import Site
from server.store.sqlite import SQLiteStore

SHOP_DOCS = {
    "Shipping": "# Shipping\n\nWe ship to Canada and the United States. Orders to Canada arrive in "
                "4 to 7 business days.\n\n## Costs\n\nShipping is free on orders over $75.",
    "Returns": "# Returns\n\nYou can return unworn items within 60 days for a full refund.",
}


def session(n: int | str) -> str:
    return f"sess_test{str(n).rjust(12, '0')}"


@dataclass
class Parley:
    base_url: str
    services: Services
    site: Site
    client: httpx.AsyncClient
    port: int
    app: ParleyApplication | None = None

    @property
    def site_key(self) -> str:
        return self.site.site_key

    def ids(self, session_id: str, site: Site | None = None, **extra: Any) -> dict[str, Any]:
        return {"site_key": (site or self.site).site_key, "session_id": session_id, **extra}

    async def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return await self.client.post(f"/api/v1/chat/{path}", content=content, headers=headers, **kwargs)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(f"/api/v1/chat/{path}", params=params)

    async def stream_events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST to the stream endpoint and parse every SSE event with httpx-sse."""
        events = []
        async with httpx_sse.aconnect_sse(self.client, "POST", "/api/v1/chat/stream", json=body) as source:
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                events.append(json.loads(event.data))
        return events

    async def ask(self, session_id: str, message: str, **extra: Any) -> list[dict[str, Any]]:
        return await self.stream_events(self.ids(session_id, message=message, **extra))


@contextlib.asynccontextmanager
async def listening(server: tornado.httpserver.HTTPServer) -> AsyncIterator[int]:
    """`server` listening on an unused loopback port (yielded) until the block ends, then stopped with
    its connections closed."""
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    try:
        yield port
    finally:
        server.stop()
        await server.close_all_connections()


async def start_parley(data_dir: Path, *, limits: Limits | None = None,
                       **config: Any) -> AsyncIterator[Parley]:
    settings = {"offline_chunk_delay": 0.0, "sse_keepalive": 15.0, "event_poll_interval": 0.05, **config}
    cfg = dataclasses.replace(Config(data_dir=data_dir), **settings)
    services = await build_services(cfg, limits=limits)
    # argon2id still, with the cheapest parameters: a second per hash is for attackers, not for CI.
    services.accounts = AccountService(services.store, idle_timeout=services.accounts.idle_timeout,
                                       hasher=PasswordHasher.from_parameters(profiles.CHEAPEST))
    services.operator_admin.accounts = services.accounts
    site = await services.sites.create("Test shop")
    for title, text in SHOP_DOCS.items():
        await services.store.add_document(site.id, title, f"https://shop.test/{title.lower()}", text)
    app = make_app(services)
    server = tornado.httpserver.HTTPServer(app, max_body_size=DEFAULT_BODY_LIMIT)
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    base_url = f"http://127.0.0.1:{port}"
    # Longer than any held request (30 s): a slow machine must not turn a wait into a client timeout.
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        try:
            yield Parley(base_url, services, site, client, port, app)
        finally:
            server.stop()
            await services.chat.shutdown()
            await server.close_all_connections()
            await services.close()


async def reopened_without_column(store: SQLiteStore, table: str, column: str) -> SQLiteStore:
    """`store` closed, its file made as it was before `column` existed, and opened again (as an
    upgrade finds an older data directory)."""
    await store.close()
    with sqlite3.connect(store.path) as db:
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    reopened = SQLiteStore(store.path)
    await reopened.open()
    return reopened
