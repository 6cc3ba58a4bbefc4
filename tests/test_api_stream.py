"""POST /api/v1/chat/stream through real HTTP, parsed by a real SSE client."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import httpx_sse

from server.ai.base import AnswerRequest, Provider
from server.turns import Turn

from tests.harness import session
from tests.providers import GatedProvider
from tests.waiting import eventually


def chunks_text(events: list[dict]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "chunk")


async def test_answer_streams_with_sse_headers_and_one_final_done(parley):
    body = parley.ids(session(1), message="Do you ship to Canada?", message_id="m_first")
    async with httpx_sse.aconnect_sse(parley.client, "POST", "/api/v1/chat/stream", json=body) as source:
        response = source.response
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = [json.loads(e.data) async for e in source.aiter_sse()]
    assert [e["type"] for e in events].count("done") == 1
    assert events[-1]["type"] == "done"
    assert len([e for e in events if e["type"] == "chunk"]) > 1
    meta = events[-1]["meta"]
    assert isinstance(meta["conversation_id"], int)
    assert meta["message_id"] == "m_first"
    assert meta["mode"] == "ai" and meta["handoff"] is False
    assert {"title": "Shipping", "url": "https://shop.test/shipping"} in meta["sources"]
    assert "Canada" in chunks_text(events)


async def test_first_chunk_reaches_the_client_before_the_last_is_made(parley):
    provider = GatedProvider(["Yes, ", "we do."])
    parley.services.ai.default_provider = provider
    body = parley.ids(session(2), message="Do you ship to Canada?")
    async with httpx_sse.aconnect_sse(parley.client, "POST", "/api/v1/chat/stream", json=body) as source:
        events = source.aiter_sse()
        provider.release()
        first = json.loads((await asyncio.wait_for(anext(events), 20)).data)
        assert first == {"type": "chunk", "content": "Yes, "}
        provider.release()  # the second chunk is only made now
        rest = [json.loads(e.data) async for e in events]
    assert rest[0] == {"type": "chunk", "content": "we do."}
    assert rest[-1]["type"] == "done"


async def test_quiet_stream_sends_keepalive_comments(tmp_path):
    from tests.harness import start_parley

    async for parley in start_parley(tmp_path, sse_keepalive=0.05):
        provider = GatedProvider(["late answer"])
        parley.services.ai.default_provider = provider
        body = parley.ids(session(3), message="Anyone there?")
        async with parley.client.stream("POST", "/api/v1/chat/stream", json=body) as response:
            raw = b""
            async for piece in response.aiter_bytes():
                raw += piece
                if raw.count(b": keepalive\n\n") >= 2 and b"done" not in raw:
                    provider.release()
        assert b": keepalive\n\n" in raw
        assert raw.rstrip().endswith(b"}}")


class PacedProvider(Provider):
    """Chunks at a steady pace, slower than the keepalive interval under test."""

    name = "paced"

    def __init__(self, chunks: int, pace: float) -> None:
        self.chunks, self.pace = chunks, pace

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        for n in range(self.chunks):
            await asyncio.sleep(self.pace)
            yield f"c{n} "


async def test_keepalives_between_chunks_never_hold_up_the_answer(tmp_path):
    from tests.harness import start_parley

    async for parley in start_parley(tmp_path, sse_keepalive=0.01):
        parley.services.ai.default_provider = PacedProvider(30, 0.015)
        body = parley.ids(session(30), message="Tell me slowly")
        async with parley.client.stream("POST", "/api/v1/chat/stream", json=body) as response:
            raw = await asyncio.wait_for(response.aread(), 30)
        events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]
        assert chunks_text(events) == "".join(f"c{n} " for n in range(30))
        assert [e["type"] for e in events].count("done") == 1 and events[-1]["type"] == "done"
        assert b": keepalive\n\n" in raw  # they did interleave with the chunks


async def test_chunks_made_while_the_writer_was_busy_come_as_one_batch():
    turn = Turn()
    batches = turn.follow_batches()
    turn.append("a")
    assert [e.content for e in await anext(batches)] == ["a"]
    turn.append("b")
    turn.append("c")
    turn.finish({"mode": "ai"})
    last = await anext(batches)
    assert [e.type for e in last] == ["chunk", "chunk", "done"]
    assert [e.content for e in last[:2]] == ["b", "c"]
    await batches.aclose()


async def test_a_stream_waiting_for_the_next_chunk_is_woken_by_it():
    turn = Turn()
    batches = turn.follow_batches()
    waiting = asyncio.ensure_future(anext(batches))
    # The stream makes its change event just before it waits on it, in the same step.
    await eventually(lambda: turn._changed is not None, what="the stream waiting for a change")
    assert not waiting.done()
    turn.append("a")
    assert [e.content for e in await asyncio.wait_for(waiting, 10)] == ["a"]
    waiting = asyncio.ensure_future(anext(batches))
    await eventually(lambda: turn._changed is not None, what="the stream waiting again")
    turn.finish({"mode": "ai"})
    assert [e.type for e in await asyncio.wait_for(waiting, 10)] == ["done"]
    await batches.aclose()


async def test_the_same_message_id_replays_the_finished_answer(parley):
    body = parley.ids(session(4), message="Do you ship to Canada?", message_id="m_retry")
    first = await parley.stream_events(body)
    again = await parley.stream_events(body)
    assert chunks_text(again) == chunks_text(first)
    assert len([e for e in again if e["type"] == "chunk"]) == 1
    assert again[-1]["meta"]["reply_id"] == first[-1]["meta"]["reply_id"]
    history = (await parley.get("history", **parley.ids(session(4)))).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"]


async def test_a_retry_during_the_answer_follows_the_same_answer(parley, caplog):
    provider = GatedProvider(["one ", "two"])
    parley.services.ai.default_provider = provider
    body = parley.ids(session(5), message="Hello?", message_id="m_twice")
    first = asyncio.create_task(parley.stream_events(body))
    await asyncio.wait_for(provider.started.wait(), 20)
    with caplog.at_level(logging.INFO, logger="server.answering"):
        second = asyncio.create_task(parley.stream_events(body))
        await eventually(lambda: "follows the answer in progress" in caplog.text, what="the retry joining")
    provider.release(2)
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert chunks_text(a) == chunks_text(b) == "one two"
    assert len(provider.requests) == 1
    history = (await parley.get("history", **parley.ids(session(5)))).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"]


async def test_reusing_a_message_id_for_other_text_is_a_conflict(parley):
    await parley.ask(session(6), "Do you ship to Canada?", message_id="m_same")
    response = await parley.post("stream", parley.ids(session(6), message="Other text", message_id="m_same"))
    assert response.status_code == 409
    assert response.json() == {"success": False, "code": "conflict",
                               "error": "This message_id was already used for a different message."}


async def test_a_visitor_leaving_mid_answer_cancels_it_and_keeps_the_partial_text(parley, leaving_cuts_at_once):
    provider = GatedProvider(["Partial ", "never sent"])
    parley.services.ai.default_provider = provider
    body = parley.ids(session(7), message="Tell me everything", message_id="m_gone")
    async with httpx_sse.aconnect_sse(parley.client, "POST", "/api/v1/chat/stream", json=body) as source:
        provider.release()
        async for event in source.aiter_sse():
            assert json.loads(event.data)["content"] == "Partial "
            break
    await asyncio.wait_for(provider.cancelled.wait(), 20)
    async def both_stored() -> list:
        messages = (await parley.get("history", **parley.ids(session(7)))).json()["messages"]
        return messages if len(messages) == 2 else []

    messages = await eventually(both_stored, what="the partial answer stored")
    assert messages[1]["role"] == "ai"
    assert messages[1]["content"] == "Partial "
    assert messages[1]["status"] == "interrupted"


async def test_a_failure_after_the_first_chunk_is_an_error_event_then_done(parley):
    parley.services.ai.default_provider = provider = GatedProvider(["Start ", "x"], fail_after=1)
    provider.release()
    events = await parley.ask(session(8), "Question")
    assert [e["type"] for e in events] == ["chunk", "error", "done"]
    assert events[1] == {"type": "error", "error": "The assistant stopped unexpectedly.", "code": "unavailable"}
    history = (await parley.get("history", **parley.ids(session(8)))).json()["messages"]
    assert history[-1]["status"] == "interrupted" and history[-1]["content"] == "Start "


async def test_no_relevant_knowledge_says_so_and_offers_a_person(parley):
    events = await parley.ask(session(9), "What is the airspeed of a swallow?")
    assert "don't know" in chunks_text(events) and "Ask for a person" in chunks_text(events)
    assert "email" not in chunks_text(events)  # no handoff, so the widget shows no email field
    assert events[-1]["meta"]["sources"] == [] and events[-1]["meta"]["handoff"] is False
    # Taking up the offer the way it is made hands the conversation over.
    events = await parley.ask(session(9), "Yes, I want a person please")
    assert events[-1]["meta"]["handoff"] is True


async def test_where_the_site_hands_unknown_questions_over_the_answer_says_someone_will_reply(parley):
    site = parley.site
    await parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"handoff_when_unsure": True}})
    events = await parley.ask(session(10), "What is the airspeed of a swallow?")
    assert "don't know" in chunks_text(events) and "asked someone from the team to reply" in chunks_text(events)
    assert "Ask for a person" not in chunks_text(events)  # the widget's own card says one is coming
    assert events[-1]["meta"]["handoff"] is True


async def test_asking_for_a_human_hands_over(parley):
    events = await parley.ask(session(10), "I want to talk to a human please")
    assert events[-1]["meta"]["handoff"] is True


async def test_operator_mode_stores_the_message_without_an_ai_answer(parley):
    await parley.services.operators.set_mode(parley.site, session(11), "operator")
    events = await parley.ask(session(11), "Are you a person?")
    assert len(events) == 1 and events[0]["type"] == "done"
    assert events[0]["meta"]["mode"] == "operator"
    history = (await parley.get("history", **parley.ids(session(11)))).json()
    assert [m["role"] for m in history["messages"]] == ["visitor"]
    assert history["mode"] == "operator"


async def test_logs_at_info_never_contain_what_the_visitor_wrote(parley, caplog):
    secret = "my card is 4111 1111 1111 1111 and I ship to Canada"
    with caplog.at_level(logging.INFO):
        await parley.ask(session(12), secret)
    assert any("visitor message" in r.getMessage() for r in caplog.records)
    assert not any("4111" in r.getMessage() for r in caplog.records)


async def test_stream_refusals_are_json_before_any_event(parley):
    cases = [
        (b"{not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (json.dumps(parley.ids(session(13))).encode(), 400, "invalid_request"),
        (json.dumps(parley.ids(session(13), message="   ")).encode(), 400, "invalid_request"),
        # Nothing anyone could read: zero-width spaces and joiners, a direction mark, a BOM.
        (json.dumps(parley.ids(session(13), message="\u200b\u200d\u200e\ufeff")).encode(), 400,
         "invalid_request"),
        (json.dumps(parley.ids(session(13), message="hi\u0000there")).encode(), 400, "invalid_request"),
        (json.dumps(parley.ids(session(13), message="x" * 4001)).encode(), 400, "invalid_request"),
        (json.dumps(parley.ids(session(13), message={"$gt": ""})).encode(), 400, "invalid_request"),
        (json.dumps(parley.ids(session(13), message="hi", message_id="bad id")).encode(), 400,
         "invalid_request"),
        (json.dumps({"site_key": "sk_" + "x" * 30, "session_id": session(13), "message": "hi"}).encode(),
         404, "unknown_site"),
    ]
    for body, status, code in cases:
        response = await parley.post("stream", body)
        assert response.status_code == status, body
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["code"] == code
        assert response.json()["success"] is False
    # Visible text with such marks inside is a message like any other (emoji sequences use them).
    answer = await parley.ask(session(13), "Do you ship to Canada? \U0001F468\u200d\U0001F469")
    assert answer[-1]["type"] == "done"


async def test_stream_rate_limit_answers_429_with_retry_after(parley):
    statuses = []
    for n in range(12):
        response = await parley.post("stream", parley.ids(session(14), message=f"question {n}"))
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["code"] == "rate_limited"
            break
    assert statuses[-1] == 429
    other = await parley.post("stream", parley.ids(session(15), message="hello"))
    assert other.status_code == 200


async def test_a_body_over_the_limit_is_413(parley):
    response = await parley.post("stream", b'{"message": "' + b"x" * 70_000 + b'"}')
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_a_chunk_event_is_the_same_json_as_any_other_event():
    # Chunks are put together by hand for speed; they must read exactly as dumps() writes them.
    from handlers.base import dumps
    from handlers.serializers import turn_event_json, turn_event_text
    from server.errors import Unavailable
    from server.turns import TurnEvent

    for text in ["plain", 'a "quoted" \\ back\\slash', "line\nbreak\ttab\r\x00\x1f", "café – ünïcode ✓",
                 "emoji 👋🏽 and \u2028\u2029 separators", "</script><!--", ""]:
        event = TurnEvent("chunk", content=text)
        assert turn_event_text(event) == dumps(turn_event_json(event))
    for event in (TurnEvent("error", error=Unavailable("down")), TurnEvent("done", meta={"a": "é"})):
        assert turn_event_text(event) == dumps(turn_event_json(event))
