"""How large a request body each route takes, and the answer to one that is larger.

Tornado reads a request's whole body into memory before its handler runs (unless the handler
streams it), so the server-wide limit is small: what any JSON call or dashboard form needs. A
route that takes more says so with a `max_body_bytes` attribute on its handler, and it applies to
that route's POST, PUT and PATCH only. The application (server/app.py) sets each request's limit as
its headers arrive, before any of the body is read.

A request that declares a longer body than its route takes is answered 413 at once (JSON for the
JSON APIs, a short page otherwise) by `BodyTooLarge`, without running the route's handler. The
body is then read and dropped, within bounds, before the connection is closed: most clients read an
answer only once they have sent their body, and closing on them early resets the connection
before they read it. Past those bounds (or when the client sent `Expect: 100-continue` and so
sends nothing unless told to go on) the connection is closed right after the answer.

A body sent without a length (chunked) cannot be refused before it is read. Tornado would stop one
at the connection's limit itself, with a bare 400 written by the connection (HTTP1Connection raises
HTTPInputError("chunked body too large") from its own read loop, which no delegate or handler sees)
and a closed connection. So for a route that takes its body whole, the application lifts the
connection's limit for such a body and counts it with `ChunkedBodyLimit`: past the route's limit the
route's delegate is dropped and `BodyTooLarge` answers the same 413 as for a declared length, then
reads and drops the rest within the same bounds. A route that streams its body counts it itself
(`counts_its_body`: AnswersBeforeBody here, ApiHandler in handlers/base.py), and the application
lifts the connection's limit for it too.
"""

from __future__ import annotations

import collections
import html
import json
import logging
import sys
from asyncio import Future
from typing import Any, Awaitable, Callable

import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop

from server.errors import ParleyError, TooLarge

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
# A refused body is read and dropped up to this much past the answer, for this long, this many at
# once in all and from one address.
DRAIN_BYTES = 32 * 1024 * 1024
DRAIN_SECONDS = 30.0
MAX_DRAINING = 64
MAX_DRAINING_PER_ADDRESS = 4
# A chunked body being counted by us (ChunkedBodyLimit, a drain) is not also stopped by Tornado.
UNCOUNTED = sys.maxsize


def body_limit(handler_class: type[tornado.web.RequestHandler], method: str | None) -> int:
    """The most a request to a route (by its handler) may send as its body."""
    if method in BODY_METHODS:
        return int(getattr(handler_class, "max_body_bytes", DEFAULT_BODY_LIMIT))
    return DEFAULT_BODY_LIMIT


def declared_length(request: tornado.httputil.HTTPServerRequest) -> int | None:
    """The body's declared length; None when it has none (or one Tornado refuses by itself)."""
    declared = request.headers.get("Content-Length", "")
    return int(declared) if declared.isdigit() else None


def is_chunked(request: tornado.httputil.HTTPServerRequest) -> bool:
    """Whether the body comes without a length (Tornado refuses any other transfer coding)."""
    return (request.headers.get("Transfer-Encoding", "").lower() == "chunked"
            and "Content-Length" not in request.headers)


def readable_bytes(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 and not size % (1024 * 1024) \
        else f"{size // 1024} KB" if size >= 1024 and not size % 1024 else f"{size} bytes"


def too_large_message(limit: int) -> str:
    return f"The request body is larger than {readable_bytes(limit)}, the most this endpoint takes."


class Drains:
    """How many refused bodies are being read and dropped at once, in all and from one address
    (see the module's docstring): past either, the refusal goes out and the connection closes."""

    def __init__(self, limit: int = MAX_DRAINING, per_address: int = MAX_DRAINING_PER_ADDRESS) -> None:
        self.limit = limit
        self.per_address = per_address
        self.in_use = 0
        self._by_address: collections.Counter[str] = collections.Counter()

    def take(self, address: str | None) -> bool:
        key = address or ""
        if self.in_use >= self.limit or self._by_address[key] >= self.per_address:
            return False
        self.in_use += 1
        self._by_address[key] += 1
        return True

    def give_back(self, address: str | None) -> None:
        key = address or ""
        self.in_use = max(0, self.in_use - 1)
        self._by_address[key] -= 1
        if self._by_address[key] <= 0:
            del self._by_address[key]


class AnswersBeforeBody(tornado.web.RequestHandler):
    """For a handler that streams its body (@stream_request_body) and may answer before it has read
    all of it (a refusal in prepare(), or one while the body comes in): the answer goes out at once,
    then the rest of the body is read and dropped within the drain bounds, then the connection is
    closed. Without this, Tornado closes the connection as soon as the answer is out, on a client
    still sending: a browser or curl then shows a reset, not the answer.

    Handlers take their body's chunks in `take_chunk`, up to their route's limit (`max_body_bytes`):
    a body without a length that passes it is refused 413 here. Tornado still calls a handler's
    method once a body that was being dropped has all come in, unless prepare() raised: a method
    that can be reached after an answer in prepare() or in take_chunk returns at once when
    `answered`."""

    counts_its_body = True  # the application lifts Tornado's limit for a chunked body (see above)
    _draining = False
    _received = 0
    _declared: int | None = None
    _drop_until = 0
    _answered: Future[None]
    _drains: Drains | None = None
    _drain_deadline: object | None = None

    def take_chunk(self, chunk: bytes) -> None:
        pass

    @property
    def answered(self) -> bool:
        """Whether the answer has gone out (and the rest of the body, if any, is being dropped)."""
        return self._draining or self._finished

    def refuse(self, error: ParleyError) -> None:
        """Answer `error` while the body is coming in (the rest is then dropped)."""
        self.log_exception(type(error), error, None)
        self.send_error(error.status, exc_info=(type(error), error, None))

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        limit = body_limit(type(self), self.request.method)
        if not self.answered and self._received > limit:  # (only a body without a length gets here)
            self.refuse(TooLarge(too_large_message(limit)))
        elif not self.answered:
            self.take_chunk(chunk)
        elif self._draining and self._declared is not None:
            if self._received >= self._declared:
                self._end_drain()  # the whole body is in: end the answer, and with it the connection
        elif self._draining and self._received > self._drop_until:
            self._cut_drain(f"more than {readable_bytes(DRAIN_BYTES)} after the answer")

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
        if self._declared is not None:
            connection.set_max_body_size(self._declared)  # all of it, rather than a 400 as well
        else:
            # Counted here (data_received) instead: Tornado's own limit would end it with a 400
            # written after this answer. Its end is when Tornado has read the last chunk.
            connection.set_max_body_size(UNCOUNTED)
            self._drop_until = self._received + DRAIN_BYTES
            self.request._body_future.add_done_callback(self._body_ended)
        self._drain_deadline = IOLoop.current().call_later(
            DRAIN_SECONDS, self._cut_drain, f"still coming after {DRAIN_SECONDS:g} s")
        self._draining = True
        self._answered = self.flush()
        return self._answered

    def _may_drain(self) -> bool:
        """Whether a body is still to come that is worth reading and dropping (and there is room)."""
        request = self.request
        declared = self._declared = declared_length(request)
        if declared is not None:
            still_to_come = declared - self._received > 0 and declared - self._received <= DRAIN_BYTES
        else:
            body = getattr(request, "_body_future", None)  # a streamed body's end (Tornado's web.py)
            still_to_come = is_chunked(request) and body is not None and not body.done()
        drains = getattr(self.application, "drains", None)
        if (not still_to_come
                # it waits for our word before it sends anything
                or (request.headers.get("Expect", "").lower() == "100-continue" and not self._received)
                or not isinstance(request.connection, HTTP1Connection)
                or not isinstance(drains, Drains) or not drains.take(request.remote_ip)):
            return False
        self._drains = drains
        return True

    def _body_ended(self, body: Future[None]) -> None:
        if self._draining and not body.cancelled() and body.exception() is None:
            self._end_drain()

    def _end_drain(self) -> None:
        self._draining = False
        connection = self.request.connection
        # Closed once the answer is out, as it says (Tornado would keep a chunked body's connection).
        super().finish().add_done_callback(lambda _: connection.close())  # type: ignore[union-attr]

    def _cut_drain(self, why: str) -> None:
        if self._draining:
            request = self.request
            log.info("%s %s from %s: stopped reading a refused body (%s) and closed the connection",
                     request.method, request.path, request.remote_ip, why)
            request.connection.close()  # type: ignore[union-attr]

    def _give_back(self) -> None:
        if self._drain_deadline is not None:
            IOLoop.current().remove_timeout(self._drain_deadline)
            self._drain_deadline = None
        drains, self._drains = self._drains, None
        if drains is not None:
            drains.give_back(self.request.remote_ip)

    def on_finish(self) -> None:
        super().on_finish()
        self._give_back()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._give_back()


@tornado.web.stream_request_body
class BodyTooLarge(AnswersBeforeBody):
    """413 for a body over its route's limit: before any of it is read when its length is declared
    (the application puts this in place of the route's own handler), or as soon as a body without
    a length passes the limit (ChunkedBodyLimit hands it over then, `received` bytes in)."""

    def initialize(self, limit: int, json_errors: bool, received: int = 0) -> None:
        self.limit = limit
        self.json_errors = json_errors
        self._received = received

    def prepare(self) -> None:
        request = self.request
        declared = declared_length(request)
        if declared is not None:
            log.info("%s %s from %s: refused a body of %d bytes (this route takes at most %d)",
                     request.method, request.path, request.remote_ip, declared, self.limit)
        else:
            log.info("%s %s from %s: refused a body sent without a length as it passed %d bytes, "
                     "the most this route takes", request.method, request.path, request.remote_ip, self.limit)
        message = too_large_message(self.limit)
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
        assert isinstance(request.connection, HTTP1Connection)
        if declared is not None:
            # Tornado would otherwise answer 400 as well, on top of this answer, for a length over the limit.
            request.connection.set_max_body_size(declared)
        # Finish, rather than finish(): no method of this handler runs once the body is in.
        raise tornado.web.Finish(body)


class ChunkedBodyLimit(tornado.httputil.HTTPMessageDelegate):
    """A route's delegate for a body without a length, on a route that takes its body whole (see the
    module's docstring): it gets the body while it is within `limit`; past that it is dropped (with
    what it had buffered) and `refusal` (BodyTooLarge's delegate) answers and drops the rest."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, limit: int,
                 refusal: Callable[[int], tornado.httputil.HTTPMessageDelegate]) -> None:
        self.delegate = delegate
        self.limit = limit
        self.refusal = refusal
        self.received = 0
        self.refused = False
        self.head: tuple[Any, tornado.httputil.HTTPHeaders] | None = None

    def headers_received(self, start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
                         headers: tornado.httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.head = (start_line, headers)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused or self.received + len(chunk) <= self.limit:
            self.received += len(chunk)
            return self.delegate.data_received(chunk)
        self.refused = True
        self.delegate.on_connection_close()  # the route's handler never runs; what it kept is let go
        self.delegate = self.refusal(self.received + len(chunk))
        self.received += len(chunk)
        assert self.head is not None
        return self.delegate.headers_received(*self.head)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
