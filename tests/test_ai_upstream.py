"""The upstream transport (server/ai/upstream.py) against the fake model: kept connections under
load, TLS, timeouts, and the errors httpx callers expect."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import AsyncIterator

import httpx
import httpx_sse
import pytest
import trustme
from tornado.testing import bind_unused_port

from server.ai.providers import upstream_client
from server.ai.upstream import UpstreamTransport
from tests.fake_openai import FakeOpenAI, Plan
from tests.waiting import eventually

BODY = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}


async def streamed_text(client: httpx.AsyncClient, base_url: str, **kwargs) -> str:
    """One chat completion read to its end, as the provider reads it: the text it carried."""
    text = []
    async with httpx_sse.aconnect_sse(client, "POST", f"{base_url}/chat/completions", json=BODY,
                                      **kwargs) as source:
        async for event in source.aiter_sse():
            if event.data != "[DONE]":
                for choice in json.loads(event.data)["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=UpstreamTransport(max_idle=4)) as client:
        yield client


async def test_connections_are_kept_when_more_answers_stream_than_may_be_kept(
        client: httpx.AsyncClient, fake_openai: FakeOpenAI):
    # httpx's own pool closes a connection going idle whenever more are open than it may keep
    # idle, so under load every question paid a new connection.
    fake_openai.default = Plan(tokens=["a", "b"], hold_after=1)
    answers = [asyncio.ensure_future(streamed_text(client, fake_openai.base_url)) for _ in range(6)]
    await eventually(lambda: len(fake_openai.calls) == 6 or None, what="six requests under way")
    fake_openai.release()
    finished, streaming = await asyncio.wait(answers, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert [a.result() for a in finished] == ["ab"] and len(streaming) == 5
    fake_openai.script(Plan(tokens=["c"]))  # a new question while five answers still stream
    assert await streamed_text(client, fake_openai.base_url) == "c"
    assert fake_openai.connections == 6
    for _ in range(5):
        fake_openai.release()
    assert await asyncio.gather(*answers) == ["ab"] * 6
    # At most four are kept: four answers at once need no new connection, a fifth does.
    fake_openai.default = Plan(tokens=["c"])
    assert await asyncio.gather(*(streamed_text(client, fake_openai.base_url) for _ in range(5))) == ["c"] * 5
    assert fake_openai.connections == 7


async def test_a_connection_the_upstream_closed_is_not_reused(client: httpx.AsyncClient,
                                                              fake_openai: FakeOpenAI):
    assert await streamed_text(client, fake_openai.base_url) == "Hello from the model."
    assert fake_openai._server is not None
    await fake_openai._server.close_all_connections()  # an upstream's own keep-alive limit
    assert await streamed_text(client, fake_openai.base_url) == "Hello from the model."
    assert fake_openai.connections == 2


async def test_answers_stream_over_tls_on_one_kept_connection():
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    fake = FakeOpenAI()
    await fake.start(ssl_context=server_context)
    try:
        assert fake.base_url.startswith("https://")
        async with httpx.AsyncClient(transport=UpstreamTransport(max_idle=4, ssl_context=client_context)) as client:
            for _ in range(3):
                assert await streamed_text(client, fake.base_url) == "Hello from the model."
            assert fake.connections == 1
        # An upstream whose certificate is not trusted is a connect error, as with httpx's own.
        async with httpx.AsyncClient(transport=UpstreamTransport(max_idle=4)) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await streamed_text(untrusting, fake.base_url)
    finally:
        await fake.stop()


async def test_silence_past_the_read_timeout_is_httpx_read_timeout(client: httpx.AsyncClient,
                                                                   fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["a", "b"], stall_after=1))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await streamed_text(client, fake_openai.base_url, timeout=httpx.Timeout(5.0, read=0.3))
    assert 0.25 < time.monotonic() - started < 5
    await eventually(lambda: fake_openai.calls[0].hung_up or None, what="the upstream sees the hang-up")
    # A steady stream slower in all than the read timeout, but never silent that long, is fine.
    fake_openai.script(Plan(tokens=["a", "b", "c", "d"], delay=0.1))
    assert await streamed_text(client, fake_openai.base_url, timeout=httpx.Timeout(5.0, read=0.3)) == "abcd"


async def test_a_refused_connection_is_httpx_connect_error(client: httpx.AsyncClient):
    sock, port = bind_unused_port()
    sock.close()  # nothing listens here
    with pytest.raises(httpx.ConnectError):
        await streamed_text(client, f"http://127.0.0.1:{port}/v1")


async def test_an_upstream_hanging_up_mid_answer_is_httpx_read_error(client: httpx.AsyncClient,
                                                                     fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["a", "b"], hold_after=1))
    answer = asyncio.ensure_future(streamed_text(client, fake_openai.base_url))
    await asyncio.wait_for(fake_openai.first_sent.wait(), 5)
    assert fake_openai._server is not None
    await fake_openai._server.close_all_connections()
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await asyncio.wait_for(answer, 5)


async def test_leaving_mid_answer_closes_the_connection(client: httpx.AsyncClient, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["a", "b"], hold_after=1))
    answer = asyncio.ensure_future(streamed_text(client, fake_openai.base_url))
    await asyncio.wait_for(fake_openai.first_sent.wait(), 5)
    answer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answer
    await asyncio.wait_for(fake_openai.hung_up.wait(), 5)
    # and the cut connection is not handed to the next request
    assert await streamed_text(client, fake_openai.base_url) == "Hello from the model."
    assert fake_openai.connections == 2


async def test_a_proxy_named_in_the_environment_is_left_to_httpx(monkeypatch):
    from server.ai.providers import upstream_client

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with upstream_client() as plain:
        assert isinstance(plain._transport, UpstreamTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    async with upstream_client() as proxied:
        assert not isinstance(proxied._transport, UpstreamTransport)


async def test_cookies_an_upstream_sets_never_go_out_again(fake_openai: FakeOpenAI):
    # One client serves every site: a cookie kept from one site's answer would go out with the
    # next site's question (OpenAI's API, behind Cloudflare, sets two on every response).
    fake_openai.set_cookie = "__cf_bm=from-site-a; Path=/; HttpOnly"
    fake_openai.default = Plan(tokens=["ok"])
    client = upstream_client()
    try:
        for _ in range(2):
            assert await streamed_text(client, fake_openai.base_url) == "ok"
    finally:
        await client.aclose()
    assert [call.headers.get("Cookie") for call in fake_openai.calls] == [None, None]
