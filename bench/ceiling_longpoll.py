"""The ceiling for held requests: a minimal Tornado long-poll server doing only the I/O Parley's
`operator-messages?wait=` does (hold a GET, answer it with JSON when a message for its session
arrives), with no store, no validation and no limits. Same URL and response shape as Parley's, so
one load generator drives both.

Run by `scripts/bench held`; prints {"port": ..., "control": ...} when ready.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import sys
from typing import Any

import tornado.gen
import tornado.httpserver
import tornado.netutil
import tornado.web

from bench.common import GcPauses
from bench.pushing import push_at_rate

KEEP_PER_SESSION = 20


class Board:
    def __init__(self) -> None:
        self.next_id = 1
        self.messages: dict[str, collections.deque[dict[str, Any]]] = {}
        self.waiters: dict[str, set[asyncio.Future[None]]] = collections.defaultdict(set)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self.waiters.values())

    def newer(self, session_id: str, after: int) -> list[dict[str, Any]]:
        return [m for m in self.messages.get(session_id, ()) if m["id"] > after]

    def say(self, session_id: str, text: str) -> None:
        box = self.messages.setdefault(session_id, collections.deque(maxlen=KEEP_PER_SESSION))
        box.append({"id": self.next_id, "role": "operator", "content": text})
        self.next_id += 1
        for future in self.waiters.pop(session_id, ()):
            if not future.done():
                future.set_result(None)


class Poll(tornado.web.RequestHandler):
    def initialize(self, board: Board) -> None:
        self.board = board
        self.future: asyncio.Future[None] | None = None

    async def get(self) -> None:
        session_id = self.get_query_argument("session_id")
        after = int(self.get_query_argument("after", "0") or 0)
        wait = min(30.0, float(self.get_query_argument("wait", "0") or 0))
        messages = self.board.newer(session_id, after)
        if not messages and wait > 0:
            self.future = asyncio.get_running_loop().create_future()
            self.board.waiters[session_id].add(self.future)
            try:
                await tornado.gen.with_timeout(datetime.timedelta(seconds=wait), self.future)
            except (tornado.gen.TimeoutError, asyncio.CancelledError):
                pass
            finally:
                self._forget()
            if self.request.connection.stream.closed():  # type: ignore[attr-defined]
                return
            messages = self.board.newer(session_id, after)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"success": True, "messages": messages, "mode": "ai"}))

    def _forget(self) -> None:
        session_id = self.get_query_argument("session_id")
        waiters = self.board.waiters.get(session_id)
        if waiters is not None and self.future is not None:
            waiters.discard(self.future)
            if not waiters:
                del self.board.waiters[session_id]

    def on_connection_close(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.cancel()


class Control(tornado.web.RequestHandler):
    def initialize(self, board: Board, gc_pauses: GcPauses) -> None:
        self.board = board
        self.gc_pauses = gc_pauses

    def get(self, action: str) -> None:
        self.finish({"waiters": self.board.waiting, "gc": self.gc_pauses.as_dict()})

    async def post(self, action: str) -> None:
        arg = self.get_query_argument
        if action == "say":
            self.board.say(arg("session_id"), arg("text"))
            self.finish({"ok": True})
            return

        async def send(session_id: str, text: str) -> None:
            self.board.say(session_id, text)

        self.finish(await push_at_rate(send, sessions=int(arg("sessions")), rate=float(arg("rate")),
                                       seconds=float(arg("seconds")), phase=arg("phase")))


def listen(app: tornado.web.Application) -> int:
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=120)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=8192)
    server.add_sockets(sockets)
    return sockets[0].getsockname()[1]


async def main() -> None:
    board = Board()
    gc_pauses = GcPauses()
    port = listen(tornado.web.Application([(r"/api/v1/chat/operator-messages", Poll, {"board": board})]))
    control = listen(tornado.web.Application([(r"/bench/(\w+)", Control,
                                               {"board": board, "gc_pauses": gc_pauses})]))
    print(json.dumps({"port": port, "control": control, "site_key": "sk_ceiling"}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
