"""A fake OpenAI-compatible chat-completions server for tests, on an unused port in the test's loop.

Each request takes the next `Plan` (or the default one): it can answer with an error status, stream
scripted tokens with delays, hold after some tokens until the test releases it, send an error event,
stall, or end without `finish_reason` / `[DONE]`. The server records every request body and whether
its client hung up before the end.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from tests.harness import Parley, start_parley

USAGE = {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}
MAX_WAIT = 30.0  # every wait in the fake ends by itself


@dataclass
class Plan:
    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the model."])
    status: int = 200
    error_body: str = '{"error": {"message": "fake failure", "type": "server_error"}}'
    delay: float = 0.0                 # before each token, kept to a fixed pace from the first
    hold_after: int | None = None      # after this many tokens, wait for `FakeOpenAI.release()`
    error_after: int | None = None     # after this many tokens, send an {"error": ...} event and stop
    stall_after: int | None = None     # after this many tokens, send nothing more (until hung up)
    finish: bool = True                # send a chunk with finish_reason "stop"
    done: bool = True                  # send "data: [DONE]"
    usage: dict[str, Any] | None = field(default_factory=lambda: dict(USAGE))


@dataclass
class Call:
    body: dict[str, Any]
    headers: dict[str, str]
    sent: list[str] = field(default_factory=list)
    hung_up: bool = False
    finished: bool = False


class FakeOpenAI:
    def __init__(self) -> None:
        self.plans: collections.deque[Plan] = collections.deque()
        self.default = Plan()
        self.calls: list[Call] = []
        self.hung_up = asyncio.Event()
        self.first_sent = asyncio.Event()
        self._release: asyncio.Queue[None] = asyncio.Queue()
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0
        self.models: list[str] | None = ["fake-model"]  # GET /v1/models; None: no such endpoint
        self.required_key: str | None = None  # when set, any other key gets 401
        self.connections = 0  # TCP connections accepted
        # Send each event at once (TCP_NODELAY), as asyncio (uvicorn: vLLM, LiteLLM) and Go
        # (Ollama) servers do. Tornado leaves Nagle's algorithm on while a response streams: on a
        # reused connection the first token then waits for the client's delayed ACK (~40 ms).
        self.nodelay = True
        self.scheme = "http"
        self.set_cookie: str | None = None  # sent with every answer, as a load balancer in front may

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    def script(self, *plans: Plan) -> None:
        self.plans.extend(plans)

    def release(self) -> None:
        self._release.put_nowait(None)

    def next_plan(self) -> Plan:
        return self.plans.popleft() if self.plans else self.default

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [c.body for c in self.calls]

    async def wait_release(self) -> None:
        await asyncio.wait_for(self._release.get(), MAX_WAIT)

    async def start(self, ssl_context: ssl.SSLContext | None = None, *, backlog: int = 128) -> None:
        """Listen on an unused port; with `ssl_context`, over TLS (`base_url` says https). A
        benchmark opening hundreds of connections at once needs a deeper `backlog` than a test."""
        app = tornado.web.Application([(r"/v1/chat/completions", _Completions, {"fake": self}),
                                       (r"/v1/models", _Models, {"fake": self})])
        self._server = _CountingServer(app, fake=self, ssl_options=ssl_context)
        self.scheme = "https" if ssl_context else "http"
        sock = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET, backlog=backlog)[0]
        self.port = sock.getsockname()[1]
        self._server.add_sockets([sock])

    async def stop(self) -> None:
        for _ in range(100):  # let every held handler end before the server closes
            self.release()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()


class _CountingServer(tornado.httpserver.HTTPServer):
    def initialize(self, *args: Any, fake: FakeOpenAI, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.fake = fake

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[str, int]) -> None:
        self.fake.connections += 1
        super().handle_stream(stream, address)


def _chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _refused(handler: tornado.web.RequestHandler, fake: FakeOpenAI) -> bool:
    if fake.required_key and handler.request.headers.get("Authorization") != f"Bearer {fake.required_key}":
        handler.set_status(401)
        handler.finish({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        return True
    return False


class _Models(tornado.web.RequestHandler):
    def initialize(self, fake: FakeOpenAI) -> None:
        self.fake = fake

    def get(self) -> None:
        if self.fake.models is None:
            raise tornado.web.HTTPError(404)
        if not _refused(self, self.fake):
            self.finish({"object": "list", "data": [{"id": m, "object": "model"} for m in self.fake.models]})


class _Completions(tornado.web.RequestHandler):
    def initialize(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.call: Call | None = None
        self.gone = asyncio.Event()

    def on_connection_close(self) -> None:
        self._hang_up()

    def _hang_up(self) -> None:
        if self.call is not None and not self.call.hung_up and not self.call.finished:
            self.call.hung_up = True
            self.fake.hung_up.set()
        self.gone.set()

    async def _event(self, payload: Any) -> bool:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.write(f"data: {data}\n\n")
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            self._hang_up()
            return False
        return True

    async def post(self) -> None:
        self.call = Call(json.loads(self.request.body), dict(self.request.headers))
        self.fake.calls.append(self.call)
        if _refused(self, self.fake):
            return
        if not self.call.body.get("stream"):  # a plain completion, as `ai check` asks
            model = self.call.body.get("model")
            if self.fake.models is not None and model not in self.fake.models:
                self.set_status(404)
                self.finish({"error": {"message": f"The model `{model}` does not exist"}})
                return
            self.finish({"object": "chat.completion", "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"},
                                      "finish_reason": "length"}]})
            return
        plan = self.fake.next_plan()
        if plan.status != 200:
            self.set_status(plan.status)
            self.set_header("Content-Type", "application/json")
            self.finish(plan.error_body)
            self.call.finished = True
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        if self.fake.set_cookie:
            self.set_header("Set-Cookie", self.fake.set_cookie)
        if self.fake.nodelay:
            self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
        if not await self._event(_chunk("") | {"choices": [{"index": 0, "delta": {"role": "assistant"},
                                                              "finish_reason": None}]}):
            return
        # Each token is due at a fixed time from the first: relative sleeps drift with the fake's
        # own load (the benchmark's upstream kept 45 answers a second at C=100 of the 50 its pace allows).
        loop = asyncio.get_running_loop()
        due = loop.time()
        for index, token in enumerate(plan.tokens):
            if index == plan.error_after:
                await self._event({"error": {"message": "fake mid-stream failure", "type": "server_error"}})
                self.call.finished = True
                return
            if index == plan.stall_after:
                await asyncio.wait_for(self.gone.wait(), MAX_WAIT)
                return
            if index == plan.hold_after:
                await self.fake.wait_release()
                due = loop.time()
            if plan.delay:
                due += plan.delay
                await asyncio.sleep(max(0.0, due - loop.time()))
            if self.gone.is_set() or not await self._event(_chunk(token)):
                return
            self.call.sent.append(token)
            self.fake.first_sent.set()
        if plan.stall_after is not None and plan.stall_after >= len(plan.tokens):
            await asyncio.wait_for(self.gone.wait(), MAX_WAIT)
            return
        if plan.finish and not await self._event(_chunk(finish="stop")):
            return
        if plan.usage is not None:
            await self._event({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                               "choices": [], "usage": plan.usage})
        if plan.done:
            await self._event("[DONE]")
        self.call.finished = True


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


API_KEY = "sk-test-0123456789-SECRET"


@pytest.fixture
async def ai_parley(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[Parley]:
    """Parley with the fake as its global model: fast retries, short but safe timeouts."""
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="fake-model",
                                     ai_api_key=API_KEY, ai_backoff=0.01, ai_first_token_timeout=5.0,
                                     ai_idle_timeout=5.0):
        yield parley
