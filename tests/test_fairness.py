"""One address cannot crowd the others out: a cap on the connections it holds open (answered 429 at
accept time), and turns per address before any handler runs. Through real sockets, from two
loopback addresses (every 127.x.y.z is this machine; the server sees each as its own client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import AsyncIterator

import pytest

from server import admission
from server.admission import Turns
from server.app import make_app
from server.listener import HTTPServer
from server.proxies import TrustedProxies
from tests.harness import Parley, listening, session
from tests.waiting import eventually

CROWD = "127.0.0.2"
OTHER = "127.0.0.1"


@contextlib.asynccontextmanager
async def capped_server(parley: Parley, cap: int, uncapped: str = "") -> AsyncIterator[tuple[HTTPServer, int]]:
    """Our HTTPServer (the one `serve` runs) over the harness's services, with a connection cap."""
    from server.proxies import parse_networks

    server = HTTPServer(make_app(parley.services), connections_per_address=cap,
                        uncapped=TrustedProxies(parse_networks(uncapped)))
    async with listening(server) as port:
        yield server, port


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def exchange(port: int, source: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a whole request, read the whole response (the server closes or we asked it to)."""
    reader, writer = await connect(port, source)
    try:
        writer.write(request)
        await writer.drain()
        return parse(await asyncio.wait_for(reader.read(), 60))
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


def history(parley: Parley, session_id: str, wait: float = 0) -> bytes:
    return get(f"/api/v1/chat/history?site_key={parley.site_key}&session_id={session_id}&wait={wait}")


def assert_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 429
    assert int(headers["retry-after"]) > 0
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["code"] == "rate_limited"


def refusal_lines(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage() and what in r.getMessage()]


async def test_one_address_over_its_connection_cap_is_answered_429_and_others_still_get_in(parley, caplog):
    async with capped_server(parley, cap=5) as (server, port):
        idle = [await connect(port, CROWD) for _ in range(5)]
        await eventually(lambda: server.open_from(CROWD) == 5, what="five open connections")
        with caplog.at_level(logging.WARNING):
            refused = await asyncio.gather(*(exchange(port, CROWD, history(parley, session(f"c{n}")))
                                             for n in range(30)))
            # A client still sending a body when refused reads the answer too, not a reset.
            with_body = await exchange(port, CROWD, b"POST /api/v1/chat/rate HTTP/1.1\r\nHost: t\r\n"
                                       b"Content-Type: application/json\r\nContent-Length: 32768\r\n\r\n"
                                       + b" " * 32768)
        for status, headers, body in [*refused, with_body]:
            assert_refused(status, headers, body)
        # Said once for the whole flood (the rest is summed up when the interval ends).
        assert len(refusal_lines(caplog, "per-address cap")) == 1

        status, _, body = await exchange(port, OTHER, history(parley, session("other")))
        assert status == 200 and json.loads(body)["success"] is True

        for _, writer in idle:
            writer.close()
        await eventually(lambda: server.open_from(CROWD) == 0, what="the idle connections closed")
        status, _, _ = await exchange(port, CROWD, history(parley, session("c-after")))
        assert status == 200


async def test_trusted_proxies_are_not_capped(parley):
    async with capped_server(parley, cap=2, uncapped=CROWD) as (server, port):
        idle = [await connect(port, CROWD) for _ in range(4)]
        await eventually(lambda: server.open_from(CROWD) == 4, what="four open connections")
        status, _, _ = await exchange(port, CROWD, history(parley, session("p")))
        assert status == 200
        for _, writer in idle:
            writer.close()


def stalled_post(parley: Parley) -> bytes:
    """A request whose handler starts (headers read) but whose body is still to come."""
    return ("POST /api/v1/chat/rate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\nConnection: close\r\n\r\n").encode()


async def test_requests_over_an_address_turns_wait_in_order_and_another_address_goes_first(
        parley, monkeypatch, caplog):
    turns = Turns(per_address=1, waiting_per_address=2)
    monkeypatch.setattr(admission, "TURN_SECONDS", 60.0)  # the stalled request keeps its turn
    async with capped_server(parley, cap=100) as (server, port):
        server.request_callback.turns = turns  # type: ignore[attr-defined]
        reader, writer = await connect(port, CROWD)
        writer.write(stalled_post(parley))
        await eventually(lambda: turns.busy(CROWD) == 1, what="the stalled request's turn")

        queued = [asyncio.create_task(exchange(port, CROWD, history(parley, session(f"q{n}"))))
                  for n in range(2)]
        await eventually(lambda: turns.waiting(CROWD) == 2, what="two requests waiting their turn")
        with caplog.at_level(logging.WARNING):
            over = await asyncio.gather(*(exchange(port, CROWD, history(parley, session(f"o{n}")))
                                          for n in range(5)))
        for status, headers, body in over:
            assert_refused(status, headers, body)
        assert len(refusal_lines(caplog, "waiting for a turn")) == 1

        # Another address is served while this one's requests wait.
        status, _, _ = await exchange(port, OTHER, history(parley, session("other")))
        assert status == 200
        assert not any(task.done() for task in queued)

        writer.write(json.dumps({"site_key": parley.site_key, "session_id": session("r"),
                                 "rating": 5}).encode().ljust(1000))
        await writer.drain()
        assert parse(await asyncio.wait_for(reader.read(), 60))[0] in (200, 400, 404)
        writer.close()
        assert [r[0] for r in await asyncio.gather(*queued)] == [200, 200]
        await eventually(lambda: turns.busy(CROWD) == 0, what="every turn handed back")


async def test_a_held_request_hands_its_turn_on(parley, monkeypatch):
    turns = Turns(per_address=1)
    monkeypatch.setattr(admission, "TURN_SECONDS", 60.0)
    async with capped_server(parley, cap=100) as (server, port):
        server.request_callback.turns = turns  # type: ignore[attr-defined]
        held = asyncio.create_task(exchange(port, CROWD, history(parley, session("h"), wait=30)))
        await eventually(lambda: parley.services.hub.subscriber_count == 1, what="a held request")
        # Its first read done, it waits for news and hands its turn on (its 60 s are far off).
        await eventually(lambda: turns.busy(CROWD) == 0, what="the held request's turn handed on")
        status, _, _ = await exchange(port, CROWD, history(parley, session("n")))
        assert status == 200
        await parley.services.operators.say(parley.site, session("h"), "hi", operator_name="Ana")
        assert (await held)[0] == 200
