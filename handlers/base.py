"""Handler bases: JSON in and out for every API, and the widget's public, cookie-less, CORS face.

`JsonHandler` answers errors as JSON, parses bodies into objects or 400, and holds a request open
while a service waits (cancelling the wait when the client goes away). `ApiHandler` is the widget's
base on top of it: bodies streamed in and capped, CORS, the visitor being served. The dashboard's
base (sign-in, XSRF, pages) lives in handlers/operator_base.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, TypeVar

import tornado.web
from tornado.iostream import StreamClosedError

from handlers.body_limit import (
    DEFAULT_BODY_LIMIT, DRAIN_BYTES, readable_bytes, too_large_message)
from server import validation
from server.chat import ChatService
from server.errors import InvalidRequest, ParleyError, TooLarge
from server.sites import SiteService
from server.store.models import Site
from server.visitor import Visitor

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
                429: "rate_limited", 503: "unavailable"}


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JsonHandler(tornado.web.RequestHandler):
    """JSON errors, JSON bodies, and held responses that end cleanly when the client leaves."""

    def initialize(self, **kwargs: Any) -> None:
        self._holding: asyncio.Task[Any] | None = None  # this request's task, while in hold()
        self._hold_cancelled = False
        self.client_gone = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    @property
    def body(self) -> bytes:
        return self.request.body

    def write_json(self, payload: dict[str, Any]) -> None:
        self.finish(dumps(payload))

    def compute_etag(self) -> None:
        # Every JSON response here is `no-store`, so no client holds a copy to revalidate: an
        # ETag would only cost a SHA-1 of each body (a held read's answer is one per message).
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ParleyError):
            self.set_status(error.status)
            if error.retry_after is not None:
                self.set_header("Retry-After", str(error.retry_after))
            body = {"success": False, "error": error.message, "code": error.code}
        elif status_code >= 500:
            self.set_status(500)
            body = {"success": False, "error": "Something went wrong on our side.", "code": "internal"}
        elif status_code == 405:
            allowed = self.allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            named = " or ".join(m for m in allowed if m != "OPTIONS")
            body = {"success": False, "error": f"Use {named} for {self.request.path}.",
                    "code": "method_not_allowed"}
        else:
            reason = self._reason if isinstance(error, tornado.web.HTTPError) else "Bad request"
            body = {"success": False, "error": reason,
                    "code": STATUS_CODES.get(status_code, "invalid_request")}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps(body))

    def allowed_methods(self) -> list[str]:
        """The methods this handler answers (those it defines), for a 405's Allow header."""
        return [method for method in self.SUPPORTED_METHODS
                if getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # The path, never the query: a site_key with a session_id reads a conversation.
        method, path = self.request.method, self.request.path
        if isinstance(value, ParleyError):
            log.info("%s %s -> %d %s", method, path, value.status, value.code)
        elif isinstance(value, tornado.web.HTTPError):
            log.warning("%s %s -> %s", method, path, value)
        else:
            log.error("%s %s failed", method, path, exc_info=(typ, value, tb))

    # -- input --------------------------------------------------------------------------------
    def json_body(self) -> dict[str, Any]:
        raw = self.body
        try:
            data = json.loads(raw)
            # A lone surrogate ("\ud800") parses but cannot be stored: refuse it here, whole.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except (UnicodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise InvalidRequest("The body must be a JSON object of valid UTF-8 text.") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The body must be a JSON object.")
        return data

    def query(self) -> dict[str, Any]:
        """Query arguments as a plain dict of strings (last one wins)."""
        return {name: self.get_query_argument(name) for name in self.request.query_arguments}

    # -- held responses -----------------------------------------------------------------------
    def set_nodelay(self) -> None:
        """Small writes go out at once instead of waiting ~40 ms for Nagle's algorithm."""
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None and not stream.closed():
            stream.set_nodelay(True)

    def client_left(self) -> bool:
        """Whether the client has gone. Tornado reports a close only once the request has been
        read; a client that sent its request and left at once (a ghost) shows as a closed stream."""
        stream = getattr(self.request.connection, "stream", None)
        return self.client_gone or (stream is not None and stream.closed())

    async def hold(self, awaitable: Awaitable[T]) -> T | None:
        """Await a held read; None when the client went away first (the wait is then cancelled,
        or never starts: a ghost must neither cost a waiter nor count against its address).

        The wait runs in this request's own task, which a hang-up cancels and this method
        un-cancels (as asyncio.timeout does): no task of its own per held request."""
        if self.client_left():
            self.client_gone = True
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            return None
        self.set_nodelay()
        task = self._holding = asyncio.current_task()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._hold_cancelled and task is not None and task.uncancel() == 0:
                return None  # our own cancel: the client left
            raise
        finally:
            self._holding = None

    def _cancel_hold(self) -> None:
        if self._holding is not None and not self._hold_cancelled:
            self._hold_cancelled = True
            self._holding.cancel()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.client_gone = True
        self._cancel_hold()

    def on_finish(self) -> None:
        self._cancel_hold()

    async def safe_flush(self) -> bool:
        """Flush; False when the client has gone (a normal goodbye, not an error)."""
        try:
            await self.flush()
        except StreamClosedError:
            self.client_gone = True
            return False
        return True


@tornado.web.stream_request_body
class ApiHandler(JsonHandler):
    """The widget's public API. Bodies are streamed in and capped at `max_body_bytes`, so nobody
    can make us buffer 100 MB; no cookies; any origin may call (sites restrict per request)."""

    max_body_bytes = DEFAULT_BODY_LIMIT

    def initialize(self, chat: ChatService, sites: SiteService) -> None:  # type: ignore[override]
        super().initialize()
        self.chat = chat
        self.sites = sites
        self._body_parts: list[bytes] | None = None  # made by the first chunk: most requests have none
        self._body_size = 0

    def set_default_headers(self) -> None:
        super().set_default_headers()
        if self.request.headers.get("Origin"):
            self.set_header("Vary", "Origin")
        if getattr(self, "_cors_origin", None):  # kept when an error clears the headers
            self.set_header("Access-Control-Allow-Origin", self._cors_origin)
            self.set_header("Access-Control-Expose-Headers", "Retry-After")

    def allow_origin(self) -> None:
        """Let the calling page read this response: only once its site is known to allow it, so a
        page the site does not allow learns nothing (not even why it was refused)."""
        self._cors_origin = self.request.headers.get("Origin")
        self.set_default_headers()

    # A body declared over max_body_bytes never reaches us (the application answers it 413, see
    # handlers/body_limit.py). One without a length is counted as it streams in (data_received
    # keeps nothing past the limit) and refused with 413 once complete, so the client reads the
    # JSON: up to DRAIN_BYTES more is read for that (the application lifts Tornado's own limit,
    # which would answer a bare 400 and close, even for one chunk that only says it is large);
    # past DRAIN_BYTES, the 413 goes out at once and the connection closes.
    counts_its_body = True

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= self.max_body_bytes:
            if self._body_parts is None:
                self._body_parts = []
            self._body_parts.append(chunk)
        elif self._body_size > self.max_body_bytes + DRAIN_BYTES and not self._finished:
            request = self.request
            log.info("%s %s from %s: stopped reading a body sent without a length %s past its limit of %d "
                     "bytes, and refused it", request.method, request.path, request.remote_ip,
                     readable_bytes(DRAIN_BYTES), self.max_body_bytes)
            refusal = TooLarge(too_large_message(self.max_body_bytes))
            self.send_error(refusal.status, exc_info=(TooLarge, refusal, None))

    @property
    def body(self) -> bytes:
        if self._body_size > self.max_body_bytes:
            raise TooLarge(too_large_message(self.max_body_bytes))
        return b"".join(self._body_parts or ())

    async def options(self, *args: Any) -> None:
        origin = self.request.headers.get("Origin")
        if origin and await self._preflight_allows(origin):
            self.allow_origin()
        self.set_status(204)
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Content-Type")
        self.set_header("Access-Control-Max-Age", "86400")
        self.clear_header("Content-Type")
        self.finish()

    async def _preflight_allows(self, origin: str) -> bool:
        """A preflight names its site only in a query (a POST's body is not sent); without one,
        the origin passes when some site allows it."""
        site_key = self.get_query_argument("site_key", None)
        if site_key is not None:
            try:
                await self.resolve_site(validation.site_key({"site_key": site_key}))
            except ParleyError:
                return False
            return True
        return await self.sites.any_allows(origin)

    async def resolve_site(self, site_key: str) -> Site:
        """The site, if the calling origin may use it (then the page may read our answers)."""
        site = await self.sites.resolve(site_key, self.request.headers.get("Origin"))
        self.allow_origin()
        return site

    async def visitor(self, data: dict[str, Any]) -> Visitor:
        site_key = validation.site_key(data)
        session_id = validation.session_id(data)
        site = await self.resolve_site(site_key)
        return Visitor(site=site, session_id=session_id, ip=self.request.remote_ip,
                       user_agent=(self.request.headers.get("User-Agent") or "")[:300] or None)

    def on_connection_close(self) -> None:
        # Tornado's own version ends a body still streaming in; without it post() would wait forever.
        super().on_connection_close()
        self._body_parts = None
