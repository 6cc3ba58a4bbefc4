"""The ceiling for streaming: a minimal Tornado relay doing only the I/O Parley's
POST /api/v1/chat/stream does: read the visitor's JSON, stream the model's chat completion, write
each token as `data: {"type":"chunk",...}` and end with `done`. No store, no retrieval, no limits.
It reads the upstream with Tornado's own HTTP client, and writes every event of one network read
before flushing once.

Prints {"port": ...} when ready."""

from __future__ import annotations

import argparse
import asyncio
import json

import tornado.httpclient
import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web


class Relay(tornado.web.RequestHandler):
    def initialize(self, upstream: str, client: tornado.httpclient.AsyncHTTPClient) -> None:
        self.upstream = upstream
        self.client = client
        self.buffer = b""
        self.gone = False

    def on_connection_close(self) -> None:
        self.gone = True

    def on_chunk(self, data: bytes) -> None:
        if self.gone:
            raise tornado.iostream.StreamClosedError()  # ends the upstream request
        self.buffer += data
        *events, self.buffer = self.buffer.split(b"\n\n")
        wrote = False
        for event in events:
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            for choice in json.loads(event[6:]).get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    self.write(b'data: ' + json.dumps({"type": "chunk", "content": content}, separators=(",", ":")).encode()
                               + b"\n\n")
                    wrote = True
        if wrote:
            self.flush()

    async def post(self) -> None:
        question = json.loads(self.request.body)["message"]
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
        self.flush()
        body = json.dumps({"model": "fake", "stream": True,
                           "messages": [{"role": "user", "content": question}]})
        try:
            await self.client.fetch(self.upstream, method="POST", body=body, streaming_callback=self.on_chunk,
                                    headers={"Content-Type": "application/json"}, request_timeout=60)
        except (tornado.httpclient.HTTPError, tornado.iostream.StreamClosedError, OSError):
            if self.gone:
                return
            self.write('data: {"type":"error","error":"upstream failed","code":"unavailable"}\n\n')
        self.finish('data: {"type":"done","meta":{}}\n\n')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="the model's /v1/chat/completions URL")
    args = parser.parse_args()
    tornado.httpclient.AsyncHTTPClient.configure(None, max_clients=10_000)
    client = tornado.httpclient.AsyncHTTPClient()
    app = tornado.web.Application([(r"/api/v1/chat/stream", Relay,
                                    {"upstream": args.upstream, "client": client})])
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=120)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=8192)
    server.add_sockets(sockets)
    print(json.dumps({"port": sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
