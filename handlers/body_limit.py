"""How large a request body each route takes, and the answer to one that is larger.

Tornado reads a request's whole body into memory before its handler runs (unless the handler
streams it), so the server-wide limit is small: what any JSON call or dashboard form needs. A
route that takes more says so with a `max_body_bytes` attribute on its handler, and it applies to
that route's POST, PUT and PATCH only. The application (server/app.py) sets each request's limit as
its headers arrive, before any of the body is read; Tornado then enforces it for a body sent
without a length (chunked) as well, with a bare 400 and a closed connection.

A request that declares a longer body than its route takes is answered 413 at once (JSON for the
JSON APIs, a short page otherwise) by `BodyTooLarge`, without running the route's handler. The
body is then read and dropped, within bounds, before the connection is closed: most clients read an
answer only once they have sent their body, and closing on them early resets the connection
before they read it. Past those bounds (or when the client sent `Expect: 100-continue` and so
sends nothing unless told to go on) the connection is closed right after the answer.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection

log = logging.getLogger(__name__)

# Any JSON call (the widget's largest is a 4,000-character message, ~24 KB escaped at worst) and
# any dashboard form but the admins' site pages. Up to this much per connection is buffered before
# a handler runs, so a client's connections (--max-connections-per-address) can hold that many times
# this in memory at most.
DEFAULT_BODY_LIMIT = 64 * 1024
# The admins' site pages: free text such as the greeting and the AI's instructions, form-encoded
# (a non-ASCII character takes up to 9 bytes).
ADMIN_FORM_BODY_LIMIT = 256 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A refused body is read and dropped up to this much, for this long, this many at once in all.
DRAIN_BYTES = 32 * 1024 * 1024
DRAIN_SECONDS = 30.0
MAX_DRAINING = 64


def body_limit(handler_class: type[tornado.web.RequestHandler], method: str | None) -> int:
    """The most a request to a route (by its handler) may send as its body."""
    if method in BODY_METHODS:
        return int(getattr(handler_class, "max_body_bytes", DEFAULT_BODY_LIMIT))
    return DEFAULT_BODY_LIMIT


def declared_length(request: tornado.httputil.HTTPServerRequest) -> int | None:
    """The body's declared length; None when it has none (or one Tornado refuses by itself)."""
    declared = request.headers.get("Content-Length", "")
    return int(declared) if declared.isdigit() else None


def readable_bytes(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 and not size % (1024 * 1024) \
        else f"{size // 1024} KB" if size >= 1024 and not size % 1024 else f"{size} bytes"


class Drains:
    """How many refused bodies are being read and dropped at once (see the module's docstring)."""

    def __init__(self, limit: int = MAX_DRAINING) -> None:
        self.limit = limit
        self.in_use = 0

    def take(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def give_back(self) -> None:
        self.in_use = max(0, self.in_use - 1)


@tornado.web.stream_request_body
class BodyTooLarge(tornado.web.RequestHandler):
    """413 for a body declared over its route's limit, before any of it is read (the application
    puts this in place of the route's own handler)."""

    def initialize(self, limit: int, json_errors: bool, drains: Drains) -> None:
        self.limit = limit
        self.json_errors = json_errors
        self.drains = drains
        self.draining = False

    async def prepare(self) -> None:
        request = self.request
        declared = declared_length(request) or 0
        log.info("%s %s from %s: refused a body of %d bytes (this route takes at most %d)",
                 request.method, request.path, request.remote_ip, declared, self.limit)
        message = f"The request body is larger than {readable_bytes(self.limit)}, the most this address takes."
        if self.json_errors:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            body = json.dumps({"success": False, "error": message, "code": "too_large"},
                              separators=(",", ":")).encode()
        else:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            body = (f"<!doctype html><title>413 Request body too large</title>"
                    f"<p>{html.escape(message)}</p>\n").encode()
        self.set_status(413)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Connection", "close")
        self.set_header("Content-Length", str(len(body)))
        expecting = request.headers.get("Expect", "").lower() == "100-continue"
        if expecting or declared > DRAIN_BYTES or not self.drains.take():
            self.finish(body)  # Tornado closes the connection once the answer is out
            return
        self.draining = True
        connection = request.connection
        assert connection is not None
        connection.set_max_body_size(declared)  # read (and drop) it all rather than answer 400 as well
        connection.set_body_timeout(DRAIN_SECONDS)
        self.write(body)
        await self.flush()

    def data_received(self, chunk: bytes) -> None:
        pass  # dropped

    def finish_drain(self, *args: Any, **kwargs: Any) -> None:
        """The whole body has been read and the answer is already out: end both, and close the
        connection as the answer said (Tornado would keep it for the client's next request)."""
        self.finish()
        if isinstance(self.request.connection, HTTP1Connection):
            self.request.connection.close()

    get = head = post = put = patch = delete = options = finish_drain

    def _give_back(self) -> None:
        if self.draining:
            self.draining = False
            self.drains.give_back()

    def on_finish(self) -> None:
        self._give_back()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._give_back()
