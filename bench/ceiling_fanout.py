"""The ceiling for the dashboard fan-out: a minimal Tornado server doing only the I/O Parley does
when a visitor chats while operators watch, with no store, no sign-in and no limits.

`POST /api/v1/chat/stream` takes the visitor's message, writes a `message` event to every tab,
then streams the visitor a short answer (the offline answerer's "don't know": ANSWER_CHUNKS
chunks, CHUNK_DELAY apart), each chunk also written to every tab, and ends with the reply's
`message` event. `GET /dashboard/events` is a tab: `ready`, then every event. Same URLs and event
shapes as Parley's, so one load generator drives both.

Run by `scripts/bench fanout`; prints {"port": ...} when ready.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.web

ANSWER_CHUNKS = 10
CHUNK_DELAY = 0.02


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Board:
    def __init__(self) -> None:
        self.next_id = 1
        self.tabs: set[Tab] = set()

    def to_tabs(self, event: dict[str, Any], event_id: int | None = None) -> None:
        head = f"id: {event_id}\n" if event_id is not None else ""
        frame = f"{head}data: {dumps(event)}\n\n"
        for tab in list(self.tabs):
            tab.send(frame)

    def message(self, session_id: str, role: str) -> None:
        message_id, self.next_id = self.next_id, self.next_id + 1
        self.to_tabs({"kind": "message", "message_id": message_id, "role": role, "reply_to": None,
                      "session_id": session_id, "site_id": 1, "stored_at": time.time()}, message_id)


class Tab(tornado.web.RequestHandler):
    def initialize(self, board: Board) -> None:
        self.board = board
        self.closed = asyncio.Event()

    def send(self, frame: str) -> None:
        self.write(frame)
        self.flush()

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.write(f"data: {dumps({'kind': 'ready'})}\n\n")
        self.board.tabs.add(self)
        try:
            await self.flush()
            await self.closed.wait()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.board.tabs.discard(self)

    def on_connection_close(self) -> None:
        self.closed.set()


class Chat(tornado.web.RequestHandler):
    def initialize(self, board: Board) -> None:
        self.board = board

    async def post(self) -> None:
        session_id = json.loads(self.request.body)["session_id"]
        self.board.message(session_id, "visitor")
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        try:
            await self.flush()
            for n in range(ANSWER_CHUNKS):
                await asyncio.sleep(CHUNK_DELAY)
                content = f" word{n} word word"
                self.board.to_tabs({"kind": "chunk", "session_id": session_id, "content": content})
                self.write(f"data: {dumps({'type': 'chunk', 'content': content})}\n\n")
                await self.flush()
            self.board.message(session_id, "ai")
            self.write(f"data: {dumps({'type': 'done'})}\n\n")
        except tornado.iostream.StreamClosedError:
            pass


async def main() -> None:
    board = Board()
    app = tornado.web.Application([(r"/api/v1/chat/stream", Chat, {"board": board}),
                                   (r"/dashboard/events", Tab, {"board": board})])
    server = tornado.httpserver.HTTPServer(app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    server.add_sockets([sock])
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
