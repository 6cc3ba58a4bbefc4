"""Turns per address: one client's flood of requests cannot starve everyone else's on the loop.

All requests share one event loop, and each costs it about a millisecond before it answers or
settles into a wait (parsing, the handler, a few store reads). Thousands arriving at once from one
address used to queue every other client's request behind all of theirs. Here a request starts its
handler only with a turn for its address: at most TURNS_PER_ADDRESS at once, the rest waiting in
order. A turn ends when the request answers, when it settles into a long wait (a held read waiting
for news: see `pass_turn`), or after TURN_SECONDS at the latest, so a slow request (an upload's
body, a model's first token) never blocks its address for long. Another address's request never
waits for a turn of this one's, so it goes through between theirs.

Requests waiting for a turn are bounded per address; past the bound they get 429 at once, without
running a handler. Refusals are logged once per interval, not once per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import logging
from typing import Awaitable, Callable

from tornado import httputil

from server.errors import RateLimited

log = logging.getLogger(__name__)

TURNS_PER_ADDRESS = 8
TURN_SECONDS = 0.25
WAITING_PER_ADDRESS = 1000
REFUSAL_LOG_INTERVAL = 10.0
RETRY_AFTER_SECONDS = 5


class Turn:
    """One request's turn; `end` is idempotent and cheap."""

    __slots__ = ("turns", "key", "timer", "ended")

    def __init__(self, turns: Turns, key: str) -> None:
        self.turns = turns
        self.key = key
        self.ended = False
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            TURN_SECONDS, self.end)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None  # an ended turn stays with its request: keep it small
            self.turns._hand_on(self.key)


# The turn of the request being served; a handler's task (and what it spawns) inherits it.
CURRENT_TURN: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("parley_turn", default=None)


def pass_turn() -> None:
    """The current request needs the loop no more for now (it has answered, or is about to wait for
    news): let the next request from its address start. A no-op outside a request."""
    turn = CURRENT_TURN.get()
    if turn is not None:
        turn.end()


class RefusalLog:
    """Says how many of something were refused, at most once per interval: the first refusal at
    once, the rest of the interval summed up when it ends, with the address refused most."""

    def __init__(self, what: str, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.what = what
        self.interval = interval
        self.saying = False  # a refusal was said less than an interval ago
        self.pending = 0
        self.by_address: collections.Counter[str] = collections.Counter()
        self.total = 0

    def refused(self, address: str) -> None:
        self.total += 1
        if not self.saying:
            self.saying = True
            log.warning("refused %s from %s (more within %g s are counted and said together)",
                        self.what, address or "an unknown address", self.interval)
            asyncio.get_running_loop().call_later(self.interval, self._summarise)
            return
        self.pending += 1
        if len(self.by_address) < 10_000 or address in self.by_address:
            self.by_address[address] += 1

    def _summarise(self) -> None:
        if not self.pending:
            self.saying = False  # quiet for a whole interval: the next refusal is said at once
            return
        address, count = self.by_address.most_common(1)[0] if self.by_address else ("", 0)
        log.warning("refused %d more %s in the last %g s, %d of them from %s", self.pending,
                    self.what, self.interval, count, address or "an unknown address")
        self.pending = 0
        self.by_address.clear()
        asyncio.get_running_loop().call_later(self.interval, self._summarise)


class Turns:
    def __init__(self, per_address: int = TURNS_PER_ADDRESS,
                 waiting_per_address: int = WAITING_PER_ADDRESS) -> None:
        self.per_address = per_address
        self.waiting_per_address = waiting_per_address
        self._busy: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[asyncio.Future[Turn]]] = {}
        self.refusals = RefusalLog("requests waiting for a turn over the per-address bound")

    def take(self, key: str) -> Turn | asyncio.Future[Turn]:
        """A turn now, or a future that gets one in order; RateLimited when too many wait."""
        if self._busy[key] < self.per_address:
            self._busy[key] += 1
            return Turn(self, key)
        waiting = self._waiting.setdefault(key, collections.deque())
        if len(waiting) >= self.waiting_per_address:
            self.refusals.refused(key)
            raise RateLimited("Too many requests from this address at once.",
                              retry_after=RETRY_AFTER_SECONDS)
        future: asyncio.Future[Turn] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        return future

    def busy(self, key: str) -> int:
        return self._busy[key]

    def waiting(self, key: str) -> int:
        return len(self._waiting.get(key, ()))

    def _hand_on(self, key: str) -> None:
        waiting = self._waiting.get(key)
        while waiting:
            future = waiting.popleft()
            if not future.done():
                if not waiting:
                    del self._waiting[key]
                future.set_result(Turn(self, key))
                return
        self._waiting.pop(key, None)
        self._busy[key] -= 1
        if self._busy[key] <= 0:
            del self._busy[key]


def refusal_response(error: RateLimited) -> tuple[httputil.ResponseStartLine, httputil.HTTPHeaders, bytes]:
    """The 429 sent without a handler: JSON, like every API error, with Retry-After."""
    body = json.dumps({"success": False, "error": error.message, "code": error.code}).encode()
    headers = httputil.HTTPHeaders({
        "Content-Type": "application/json; charset=utf-8",
        "Content-Length": str(len(body)),
        "Retry-After": str(error.retry_after),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Connection": "close",
    })
    return httputil.ResponseStartLine("HTTP/1.1", 429, "Too Many Requests"), headers, body


class TakeTurn(httputil.HTTPMessageDelegate):
    """Runs the request's delegate (routing, then its handler) only with a turn for its address
    (the connection's remote_ip: forwarding headers are applied before this)."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, request_conn: httputil.HTTPConnection,
                 turns: Turns) -> None:
        self.delegate = delegate
        self.request_conn = request_conn
        self.turns = turns
        self.turn: Turn | None = None
        self.refused = False

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        context = getattr(self.request_conn, "context", None)
        key = str(getattr(context, "remote_ip", "") or "")
        try:
            taken = self.turns.take(key)
        except RateLimited as error:
            self.refused = True
            self.request_conn.write_headers(*refusal_response(error))
            self.request_conn.finish()
            return None
        if isinstance(taken, Turn):
            self.turn = taken
            return self._with_turn(self.delegate.headers_received, start_line, headers)
        return self._headers_after_wait(taken, start_line, headers)

    async def _headers_after_wait(self, waiting: asyncio.Future[Turn],
                                  start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                                  headers: httputil.HTTPHeaders) -> None:
        self.turn = await waiting
        result = self._with_turn(self.delegate.headers_received, start_line, headers)
        if result is not None:
            await result

    def _with_turn(self, call: Callable[..., Awaitable[None] | None], *args: object
                   ) -> Awaitable[None] | None:
        # Tasks the delegate starts (the handler's) copy the context, and with it the turn.
        token = CURRENT_TURN.set(self.turn)
        try:
            return call(*args)
        finally:
            CURRENT_TURN.reset(token)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused:
            return None
        return self._with_turn(self.delegate.data_received, chunk)

    def finish(self) -> None:
        if not self.refused:
            self._with_turn(self.delegate.finish)

    def on_connection_close(self) -> None:
        if not self.refused:
            self.delegate.on_connection_close()
