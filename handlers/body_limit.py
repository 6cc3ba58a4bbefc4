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
from asyncio import Future
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


class AnswersBeforeBody(tornado.web.RequestHandler):
    """For a handler that streams its body (@stream_request_body) and may answer before reading it
    (a refusal in prepare()): the answer goes out at once, then the body is read and dropped within
    the drain bounds, then the connection is closed. Without this, Tornado closes the connection as
    soon as the answer is out, on a client still sending: a browser then shows a reset, not the
    answer. Handlers take their body's chunks in `take_chunk`."""

    _draining = False
    _received = 0
    _declared: int | None = None
    _answered: Future[None]
    _drains: Drains

    def take_chunk(self, chunk: bytes) -> None:
        pass

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if not self._draining:
            self.take_chunk(chunk)
        elif self._declared is not None and self._received >= self._declared:
            self._draining = False  # the whole body is in: end the answer, and with it the connection
            super().finish()

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        if self._draining:  # answered already (send_error finishes after write_error did)
            return self._answered
        if not self._may_drain():
            return super().finish(chunk)
        if chunk is not None:
            self.write(chunk)
        if "Content-Length" not in self._headers:
            self.set_header("Content-Length", str(sum(len(part) for part in self._write_buffer)))
        self.set_header("Connection", "close")
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        connection.set_max_body_size(self._declared or 0)  # all of it, rather than a 400 as well
        connection.set_body_timeout(DRAIN_SECONDS)
        self._draining = True
        self._answered = self.flush()
        return self._answered

    def _may_drain(self) -> bool:
        """Whether a body is still to come that is worth reading and dropping (and there is room)."""
        request = self.request
        declared = self._declared = declared_length(request)
        drains = getattr(self.application, "drains", None)
        if (declared is None or declared <= self._received or declared > DRAIN_BYTES
                or request.headers.get("Expect", "").lower() == "100-continue"  # it waits for our word
                or not isinstance(request.connection, HTTP1Connection)
                or not isinstance(drains, Drains) or not drains.take()):
            return False
        self._drains = drains
        return True

    def _give_back(self) -> None:
        drains = self.__dict__.pop("_drains", None)
        if drains is not None:
            drains.give_back()

    def on_finish(self) -> None:
        super().on_finish()
        self._give_back()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._give_back()


@tornado.web.stream_request_body
class BodyTooLarge(AnswersBeforeBody):
    """413 for a body declared over its route's limit, before any of it is read (the application
    puts this in place of the route's own handler)."""

    def initialize(self, limit: int, json_errors: bool) -> None:
        self.limit = limit
        self.json_errors = json_errors

    def prepare(self) -> None:
        request = self.request
        log.info("%s %s from %s: refused a body of %s bytes (this route takes at most %d)",
                 request.method, request.path, request.remote_ip, request.headers.get("Content-Length"),
                 self.limit)
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
        declared = declared_length(request)
        assert declared is not None and isinstance(request.connection, HTTP1Connection)
        # Tornado would otherwise answer 400 as well, on top of this answer, for a length over the limit.
        request.connection.set_max_body_size(declared)
        self.finish(body)
