"""What a careless client or an attacker tries: none of it may cost a 500, a leak or lost data."""

from __future__ import annotations

import asyncio
import gc
import json
import logging

import httpx_sse

import server.turns
from handlers.upload import UploadImageHandler
from server.serve import housekeep
from server.store.base import StoreUnavailable
from tests.harness import session
from tests.waiting import eventually
from tests.providers import GatedProvider

SID = session("hardening")


async def drop_after_the_first_chunk(parley, provider: GatedProvider, message_id: str) -> dict:
    """A visitor's question whose connection drops after the first chunk; its body, for a retry."""
    parley.services.ai.default_provider = provider
    body = parley.ids(SID, message="Do you ship to Canada?", message_id=message_id)
    async with httpx_sse.aconnect_sse(parley.client, "POST", "/api/v1/chat/stream", json=body) as source:
        provider.release()
        async for _ in source.aiter_sse():
            break
    return body


async def test_a_retry_after_a_dropped_connection_follows_the_same_answer(parley):
    """A network blip mid-answer: the answer goes on without anyone following, and the widget's
    retry (the same message_id, within seconds) picks it up where it is. One model call and one
    stored answer, not a cut-off answer beside a second one per blip."""
    provider = GatedProvider(["Partial ", "and the rest."])
    body = await drop_after_the_first_chunk(parley, provider, "m_blip")
    [answer] = parley.services.chat.answers._live_turns.values()
    await asyncio.wait_for(answer.unfollowed(), 10)  # the server has seen the visitor go
    retry = asyncio.create_task(parley.stream_events(body))
    provider.release()
    events = await asyncio.wait_for(retry, 20)
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == "Partial and the rest."
    assert len(provider.requests) == 1 and not provider.cancelled.is_set()
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [(m["role"], m["status"]) for m in history] == [("visitor", "complete"), ("ai", "complete")]


async def test_an_answer_nobody_comes_back_for_is_cut_after_the_grace(parley, monkeypatch):
    monkeypatch.setattr(server.turns, "ABANDONED_AFTER_SECONDS", 1.0)
    provider = GatedProvider(["Partial ", "never sent"])
    await drop_after_the_first_chunk(parley, provider, "m_gone")
    [answer] = parley.services.chat.answers._live_turns.values()
    await asyncio.wait_for(answer.unfollowed(), 10)
    assert not provider.cancelled.is_set()  # not at once: a retry may be on its way
    await asyncio.wait_for(provider.cancelled.wait(), 10)
    history = await eventually(lambda: cut_off_stored(parley), what="the cut-off answer stored")
    assert [(m["content"], m["status"]) for m in history][1:] == [("Partial ", "interrupted")]


async def cut_off_stored(parley) -> list:
    messages = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    return messages if len(messages) == 2 else []


async def test_a_retry_after_a_cut_off_answer_gets_a_whole_answer(parley, leaving_cuts_at_once):
    first = GatedProvider(["Partial ", "rest"])
    body = await drop_after_the_first_chunk(parley, first, "m_dropped")
    await asyncio.wait_for(first.cancelled.wait(), 20)
    parley.services.ai.default_provider = second = GatedProvider(["Yes, ", "we do."])
    second.release(2)
    await eventually(lambda: cut_off_stored(parley), what="the cut-off answer stored")
    events = await parley.stream_events(body)
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == "Yes, we do."
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("visitor", "complete"), ("ai", "interrupted"), ("ai", "complete")]
    replay = await parley.stream_events(body)  # and once complete, it is replayed, not redone
    assert [e["content"] for e in replay if e["type"] == "chunk"] == ["Yes, we do."]
    assert len(second.requests) == 1


async def test_odd_input_is_a_400_never_a_500(parley):
    bodies = [
        b"[" * 50_000,
        b'{"site_key": "x", "score": ' + b"9" * 5000 + b"}",
        json.dumps(parley.ids(SID, message="\ud800 x")).encode("utf-8", "surrogatepass"),
        b'{"message": "\\ud800 x", "site_key": "' + parley.site_key.encode() + b'", "session_id": "' + SID.encode() + b'"}',
    ]
    for body in bodies:
        response = await parley.post("stream", body)
        assert response.status_code == 400, body[:60]
        assert response.json()["code"] == "invalid_request"
    assert (await parley.get("history", **parley.ids(SID))).json()["messages"] == []  # nothing half-written


async def test_malformed_origins_are_refused_not_crashed(parley):
    strict = await parley.services.sites.create("Strict", ["https://shop.example.com"])
    for origin in ("http://[::1", "https://x.com:99999", "null"):
        response = await parley.client.get("/api/v1/chat/block-status", params=parley.ids(SID, site=strict),
                                           headers={"Origin": origin})
        assert response.status_code == 403, origin
        assert response.json()["code"] == "origin_not_allowed"


async def test_a_chunked_body_over_the_limit_is_a_413_in_json(parley):
    async def body():
        for _ in range(100):
            yield b"x" * 1024

    response = await parley.client.post("/api/v1/chat/stream", content=body(),
                                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


async def test_an_upload_abandoned_midway_frees_its_handler(parley):
    def live_uploads() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, UploadImageHandler))

    before = live_uploads()
    writers = []
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", parley.port)
        writer.write(b"POST /api/v1/chat/upload-image HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
                     + b"x" * 5000)
        await writer.drain()
        writers.append(writer)
    await eventually(lambda: live_uploads() >= before + 3, what="three uploads under way")
    for writer in writers:
        writer.close()
    await eventually(lambda: live_uploads() == before, what="every abandoned upload freed")


async def test_cross_origin_widgets_can_read_retry_after(parley):
    response = await parley.client.get("/api/v1/chat/history", params=parley.ids(SID),
                                       headers={"Origin": "https://shop.example.com"})
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()


async def test_the_access_log_keeps_session_ids_and_page_urls_out(parley, caplog):
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        await parley.get("pending-proactive", **parley.ids(SID), page_url="https://shop.test/?email=a@b.co")
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any("/api/v1/chat/pending-proactive" in line for line in lines)
    assert not any(SID in line or "a@b.co" in line for line in lines)


async def test_acknowledging_does_not_swallow_a_rule_not_yet_due(parley):
    await parley.services.rules.add(parley.site, "/pricing", 0.3, "Questions about plans?")
    await parley.get("pending-proactive", **parley.ids(SID), page_url="https://shop.test/pricing")
    sent = await parley.services.operators.send_proactive(parley.site, SID, "Hi from Ana")
    acked = (await parley.get("pending-proactive", **parley.ids(SID), after=sent.id, wait=5)).json()
    assert [m["content"] for m in acked["messages"]] == ["Questions about plans?"]


async def test_one_address_cannot_hold_unbounded_requests(parley, monkeypatch):
    from server.hub import HoldLimits

    monkeypatch.setattr(parley.services.hub, "hold_limits", HoldLimits(per_address=3))
    held = [asyncio.create_task(parley.get("history", **parley.ids(session(f"ip{n}")), wait=10))
            for n in range(3)]
    await eventually(lambda: parley.services.hub.subscriber_count == 3, what="three held requests")
    refused = await parley.get("history", **parley.ids(session("ip-more")), wait=10)
    assert refused.status_code == 429
    for n in range(3):
        await parley.services.operators.say(parley.site, session(f"ip{n}"), "hi", operator_name="Ana")
    assert all(r.status_code == 200 for r in await asyncio.gather(*held))
    assert (await parley.get("history", **parley.ids(session("ip-more")), wait=0.1)).status_code == 200


async def test_a_failing_housekeeping_job_is_a_line_in_the_log_and_the_others_still_run(caplog):
    ran: list[str] = []

    async def locked() -> None:
        raise StoreUnavailable("The database is unavailable; please try again.")

    async def broken() -> None:
        raise RuntimeError("a bug")

    async def fine() -> None:
        ran.append("fine")

    with caplog.at_level(logging.WARNING):
        await housekeep({"pruning old events": locked, "retention": broken, "the last one": fine})
    assert ran == ["fine"]
    lines = [r for r in caplog.records if r.getMessage().startswith("housekeeping:")]
    assert [(r.levelname, r.exc_info is not None) for r in lines] == [("WARNING", False), ("ERROR", True)]
    assert "pruning old events failed, tried again in a minute: The database is unavailable" in lines[0].getMessage()
