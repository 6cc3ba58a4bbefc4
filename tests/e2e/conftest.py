"""A real Parley (with the demo site, answers paced like typing) and a real chromium per test."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from playwright.async_api import Browser, async_playwright

from server.demo import ensure_demo_site
from server.store.models import Site
from tests.e2e.browser import CHROMIUM_ARGS, chromium_path
from tests.harness import Parley, start_parley


@pytest.fixture
async def parley(tmp_path: Path) -> AsyncIterator[Parley]:
    # 50 ms between chunks: slow enough that a browser sees the answer grow, fast enough for the suite.
    async for harness in start_parley(tmp_path, offline_chunk_delay=0.05):
        yield harness


@pytest.fixture
async def demo(parley: Parley) -> Site:
    site, _ = await ensure_demo_site(parley.services.sites, parley.services.store)
    return site


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


HOSTILE_CSS = """* { all: unset } div { display: none } button { color: red; font-size: 40px }
section, p { display: none !important }
footer { display: block; position: fixed; left: 0; right: 0; bottom: 0; height: 120px; z-index: 2147483647 }"""


class HostPage(tornado.web.RequestHandler):
    """A customer's page on another origin that makes everything hard for an embedded widget: CSS
    hostile to anything it can reach, a fixed footer at the top z-index, right-to-left, and a
    Content-Security-Policy with no inline styles."""

    def initialize(self, parley_url: str, site_key: str) -> None:
        self.parley_url = parley_url
        self.site_key = site_key

    def get(self, path: str) -> None:
        if path == "hostile.css":
            self.set_header("Content-Type", "text/css")
            self.finish(HOSTILE_CSS)
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", f"default-src 'self'; script-src {self.parley_url}; "
                        f"connect-src {self.parley_url}; img-src * data:; style-src 'self'")
        self.finish(f"""<!doctype html><html lang="ar" dir="rtl"><head><meta charset="utf-8">
<link rel="icon" href="data:,"><title>A hostile shop</title><link rel="stylesheet" href="/hostile.css">
</head><body><div>Host content</div><h1>Shop</h1><footer>Footer</footer>
<script src="{self.parley_url}/widget/widget.js" data-site-key="{self.site_key}" async></script>
</body></html>""")


@pytest.fixture
async def host_page(parley: Parley, demo: Site) -> AsyncIterator[str]:
    """The URL of a page on a second port: another origin than the chat server."""
    app = tornado.web.Application([(r"/(.*)", HostPage, {"parley_url": parley.base_url,
                                                     "site_key": demo.site_key})])
    server = tornado.httpserver.HTTPServer(app)
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    try:
        yield f"http://localhost:{port}/"
    finally:
        server.stop()
        await server.close_all_connections()
