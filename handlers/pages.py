"""Pages and files for browsers: the demo page, uploaded images, the widget's script."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import tornado.web

from server.blobs import BlobStore, is_blob_key
from server.errors import Unavailable
from server.sites import SiteService


class FileHandler(tornado.web.StaticFileHandler):
    def parse_url_path(self, url_path: str) -> str:
        # A NUL makes the file system calls raise; no file has one in its name.
        if "\x00" in url_path:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)


class UploadedFileHandler(tornado.web.RequestHandler):
    """/uploads/<key>: the image from the blob store, or a redirect to where the store serves it
    (a fresh signed URL). Never sniffed as HTML; cached for long, since keys are random."""

    def initialize(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    async def get(self, key: str) -> None:
        if not is_blob_key(key):
            raise tornado.web.HTTPError(404)
        try:
            target = await self.blobs.redirect_for(key)
            blob = None if target else await self.blobs.open(key)
        except Unavailable:
            raise tornado.web.HTTPError(503) from None
        if target:
            self.set_header("Cache-Control", "private, max-age=300")  # shorter than the signature
            self.redirect(target)
            return
        if blob is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", blob.content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.finish(blob.data)

    head = get


class WidgetFileHandler(FileHandler):
    """The widget's JavaScript and CSS, loaded cross-origin by customers' pages."""

    def get_content_type(self) -> str:
        # The same on every system (mimetypes says application/javascript on some).
        if self.absolute_path and self.absolute_path.endswith(".js"):
            return "text/javascript; charset=utf-8"
        return super().get_content_type()

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Cache-Control", "public, max-age=300")


WIDGET_INCLUDE = "/* @include markdown.js */"


def widget_script(directory: Path) -> bytes:
    """widget.js with markdown.js inlined at its marker: customers load one file, and the widget and the
    dashboard (which loads markdown.js itself) render Markdown with the same code."""
    script = (directory / "widget.js").read_text("utf-8")
    if script.count(WIDGET_INCLUDE) != 1:
        raise RuntimeError(f"{directory / 'widget.js'} must hold {WIDGET_INCLUDE} exactly once")
    return script.replace(WIDGET_INCLUDE, (directory / "markdown.js").read_text("utf-8").strip()).encode()


class WidgetScriptHandler(tornado.web.RequestHandler):
    """/widget/widget.js, assembled once at startup; Tornado adds the ETag and answers 304 to it."""

    def initialize(self, script: bytes) -> None:
        self.script = script

    def get(self) -> None:
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(self.script)

    head = get


class DashboardFileHandler(tornado.web.StaticFileHandler):
    """The dashboard's own scripts and styles (no build step): same-origin only."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")


class DemoPageHandler(tornado.web.RequestHandler):
    def initialize(self, sites: SiteService, demo_site_name: str) -> None:
        self.sites = sites
        self.demo_site_name = demo_site_name

    async def get(self) -> None:
        demo = next((s for s in await self.sites.list() if s.name == self.demo_site_name), None)
        if demo is None:
            raise tornado.web.HTTPError(404, reason="No demo site here; start with --demo.")
        nonce = secrets.token_urlsafe(16)
        # The widget draws its own <style> in a Shadow DOM and fetches from this origin.
        self.set_header("Content-Security-Policy", (
            f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob: https:; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"))
        self.set_header("Cache-Control", "no-store")
        template = self.settings["jinja"].get_template("demo.html")
        self.finish(template.render(site=demo, shop_name=demo.name.removeprefix("Demo: "),
                                    nonce=nonce, **self._extra()))

    def _extra(self) -> dict[str, Any]:
        return {"base_url": f"{self.request.protocol}://{self.request.host}"}
