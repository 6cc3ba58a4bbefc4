"""The OpenAI-compatible provider through the real stream endpoint, against the fake upstream."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx_sse

import pytest

from server.ai import openai_compat
from server.ai.openai_compat import IdleDeadline, OpenAICompatible
from tests.fake_openai import API_KEY, FakeOpenAI, Plan
from tests.harness import Parley, session, start_parley
from tests.waiting import eventually


def text_of(events: list[dict]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "chunk")


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


async def stored_reply(parley: Parley, session_id: str, *, timeout: float = 10.0) -> dict:
    """The AI (or system) message of the session, once stored."""

    async def last_reply() -> dict | None:
        response = await parley.get("history", **parley.ids(session_id))
        replies = [m for m in response.json()["messages"] if m["role"] != "visitor"]
        return replies[-1] if replies else None

    return await eventually(last_reply, timeout=timeout, what="a stored reply")


async def test_global_base_url_switches_the_default_provider(ai_parley: Parley):
    assert isinstance(ai_parley.services.ai.default_provider, OpenAICompatible)


async def test_chunks_arrive_in_order_before_the_upstream_finishes(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["We ", "ship ", "to ", "Canada."], hold_after=1))
    body = ai_parley.ids(session(1), message="Do you ship to Canada?")
    async with httpx_sse.aconnect_sse(ai_parley.client, "POST", "/api/v1/chat/stream", json=body) as source:
        events = source.aiter_sse()
        first = json.loads((await asyncio.wait_for(anext(events), 5)).data)
        # The fake is still holding the other three tokens back: streaming is real.
        assert first == {"type": "chunk", "content": "We "}
        assert fake_openai.calls[0].sent == ["We "] and not fake_openai.calls[0].finished
        fake_openai.release()
        rest = [json.loads(e.data) async for e in events]
    assert [e["content"] for e in rest if e["type"] == "chunk"] == ["ship ", "to ", "Canada."]
    assert rest[-1]["type"] == "done" and rest[-1]["meta"]["handoff"] is False
    assert len(fake_openai.calls) == 1


async def test_request_is_a_streamed_chat_completion_with_the_key(ai_parley: Parley, fake_openai: FakeOpenAI):
    await ai_parley.ask(session(2), "Do you ship to Canada?")
    call = fake_openai.calls[0]
    assert call.body["model"] == "fake-model"
    assert call.body["stream"] is True
    assert call.body["stream_options"] == {"include_usage": True}
    assert call.headers["Authorization"] == f"Bearer {API_KEY}"
    assert call.body["messages"][-1] == {"role": "user", "content": "Do you ship to Canada?"}


async def test_usage_is_stored_with_the_answer(ai_parley: Parley, fake_openai: FakeOpenAI):
    events = await ai_parley.ask(session(3), "Do you ship to Canada?")
    reply_id = events[-1]["meta"]["reply_id"]
    conversation = await ai_parley.services.store.get_conversation(ai_parley.site.id, session(3))
    messages = await ai_parley.services.store.recent_messages(conversation.id, 10)
    reply = next(m for m in messages if m.id == reply_id)
    assert reply.content == "Hello from the model."
    assert reply.usage == {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}
    assert messages[0].usage is None  # the visitor's message has none


async def test_failures_before_the_first_token_are_retried(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(status=500), Plan(status=503), Plan(tokens=["Third ", "time."]))
    events = await ai_parley.ask(session(4), "Do you ship to Canada?")
    assert types(events) == ["chunk", "chunk", "done"]
    assert text_of(events) == "Third time."
    assert len(fake_openai.calls) == 3


async def test_error_event_or_cut_stream_before_any_token_is_retried(ai_parley: Parley,
                                                                       fake_openai: FakeOpenAI):
    fake_openai.script(Plan(error_after=0), Plan(tokens=[], finish=False, done=False), Plan())
    events = await ai_parley.ask(session(5), "Do you ship to Canada?")
    assert text_of(events) == "Hello from the model."
    assert len(fake_openai.calls) == 3


async def test_retries_are_bounded_then_the_visitor_gets_an_error(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.default = Plan(status=502)
    events = await ai_parley.ask(session(6), "Do you ship to Canada?")
    assert types(events) == ["error", "done"]
    assert events[0]["code"] == "unavailable"
    assert "try again" in events[0]["error"]
    assert len(fake_openai.calls) == 3  # ai_attempts defaults to 3


async def test_client_errors_are_not_retried(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(status=401, error_body='{"error": {"message": "bad key"}}'))
    events = await ai_parley.ask(session(7), "Do you ship to Canada?")
    assert types(events) == ["error", "done"]
    assert len(fake_openai.calls) == 1


async def test_failure_after_the_first_token_is_an_error_event_not_a_retry(ai_parley: Parley,
                                                                            fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["Partial ", "answer", " lost"], error_after=2))
    events = await ai_parley.ask(session(8), "Do you ship to Canada?")
    assert types(events) == ["chunk", "chunk", "error", "done"]
    assert text_of(events) == "Partial answer"
    assert len(fake_openai.calls) == 1
    reply = await stored_reply(ai_parley, session(8))
    assert reply["content"] == "Partial answer" and reply["status"] == "interrupted"


async def test_stream_ending_without_finish_or_done_is_a_failure(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["Cut ", "short"], finish=False, done=False))
    events = await ai_parley.ask(session(9), "Do you ship to Canada?")
    assert types(events) == ["chunk", "chunk", "error", "done"]
    assert len(fake_openai.calls) == 1
    assert (await stored_reply(ai_parley, session(9)))["status"] == "interrupted"


async def test_finish_reason_without_done_is_a_complete_answer(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["Fine."], done=False))
    events = await ai_parley.ask(session(10), "Do you ship to Canada?")
    assert types(events) == ["chunk", "done"]
    assert (await stored_reply(ai_parley, session(10)))["status"] == "complete"


async def test_answers_one_after_another_share_one_upstream_connection(ai_parley: Parley,
                                                                      fake_openai: FakeOpenAI):
    # A finished answer's connection goes back to the pool: the next question skips the handshake.
    for n in range(3):
        events = await ai_parley.ask(session(30 + n), "Do you ship to Canada?")
        assert types(events) == ["chunk", "chunk", "chunk", "done"]
    assert len(fake_openai.calls) == 3 and fake_openai.connections == 1


async def test_visitor_disconnect_closes_the_upstream_request(ai_parley: Parley, fake_openai: FakeOpenAI,
                                                              leaving_cuts_at_once):
    fake_openai.script(Plan(tokens=["One ", "two ", "three"], hold_after=1))
    body = ai_parley.ids(session(11), message="Do you ship to Canada?")
    async with httpx_sse.aconnect_sse(ai_parley.client, "POST", "/api/v1/chat/stream", json=body) as source:
        first = json.loads((await asyncio.wait_for(anext(source.aiter_sse()), 5)).data)
        assert first["content"] == "One "
    # Leaving the block closed our connection; Parley must close its upstream one in turn.
    await asyncio.wait_for(fake_openai.hung_up.wait(), 5)
    assert fake_openai.calls[0].hung_up and fake_openai.calls[0].sent == ["One "]
    reply = await stored_reply(ai_parley, session(11))
    assert reply["content"] == "One " and reply["status"] == "interrupted"


async def test_first_token_timeout_retries_then_fails(tmp_path, fake_openai: FakeOpenAI):
    fake_openai.default = Plan(stall_after=0)
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="m",
                                     ai_first_token_timeout=0.2, ai_attempts=2, ai_backoff=0.01):
        events = await asyncio.wait_for(parley.ask(session(12), "Do you ship to Canada?"), 10)
        assert types(events) == ["error", "done"]
        assert len(fake_openai.calls) == 2
        await asyncio.wait_for(fake_openai.hung_up.wait(), 5)
        assert all(call.hung_up for call in fake_openai.calls)


async def test_silence_between_tokens_times_out_without_retry(tmp_path, fake_openai: FakeOpenAI):
    fake_openai.default = Plan(tokens=["Start ", "never"], stall_after=1)
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="m",
                                     ai_idle_timeout=0.2, ai_backoff=0.01):
        events = await asyncio.wait_for(parley.ask(session(13), "Do you ship to Canada?"), 10)
        assert types(events) == ["chunk", "error", "done"]
        assert len(fake_openai.calls) == 1
        await asyncio.wait_for(fake_openai.hung_up.wait(), 5)


async def test_a_steady_model_is_not_cut_by_the_silence_limit(tmp_path, fake_openai: FakeOpenAI):
    # Each token comes well within the limit; the whole answer takes longer than it.
    fake_openai.default = Plan(tokens=[f"t{n} " for n in range(7)], delay=0.3)
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="m",
                                     ai_idle_timeout=1.5, ai_backoff=0.01):
        events = await asyncio.wait_for(parley.ask(session(16), "Do you ship to Canada?"), 20)
        assert types(events)[-1] == "done" and "error" not in types(events)
        assert text_of(events) == "".join(f"t{n} " for n in range(7))


async def _slowly_consumed(deadline: IdleDeadline, items: int, consumer_pause: float) -> list[int]:
    async def source():
        async with deadline:
            for n in range(items):
                deadline.touch()
                deadline.paused = True
                yield n
                deadline.paused = False

    seen = []
    async for n in source():
        seen.append(n)
        await asyncio.sleep(consumer_pause)  # the consumer's own time, not the source's silence
    return seen


async def test_idle_deadline_counts_only_the_source_silence():
    assert await _slowly_consumed(IdleDeadline(0.05), 3, 0.2) == [0, 1, 2]

    async def silent():
        async with IdleDeadline(0.05):
            await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(silent(), 10)
    # A cancellation from outside stays a cancellation.
    task = asyncio.ensure_future(silent())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_connect_failure_is_retried_then_reported(tmp_path):
    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()
    sock.close()  # nothing listens here: connection refused
    async for parley in start_parley(tmp_path, ai_base_url=f"http://127.0.0.1:{port}/v1", ai_model="m",
                                     ai_attempts=2, ai_backoff=0.01, ai_connect_timeout=1.0):
        events = await asyncio.wait_for(parley.ask(session(14), "Do you ship to Canada?"), 10)
        assert types(events) == ["error", "done"]


async def test_the_api_key_is_never_logged(ai_parley: Parley, fake_openai: FakeOpenAI, caplog):
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {API_KEY}"}})
    fake_openai.script(Plan(status=401, error_body=echo))
    events = await ai_parley.ask(session(15), "Do you ship to Canada?")
    assert types(events) == ["error", "done"]
    assert "HTTP 401" in caplog.text
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(ai_parley.services.config)


async def test_a_model_that_never_stops_is_cut_and_its_text_kept(tmp_path, fake_openai: FakeOpenAI):
    # A token every 0.05 s for ever (as far as this test goes); answers may stream 0.5 s.
    fake_openai.default = Plan(tokens=[f"t{n} " for n in range(2000)], delay=0.05)
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="m",
                                     ai_max_answer_seconds=0.5, ai_backoff=0.01):
        events = await asyncio.wait_for(parley.ask(session(17), "Do you ship to Canada?"), 20)
        assert types(events)[-2:] == ["error", "done"] and "chunk" in types(events)
        assert len(text_of(events).split()) < 100  # cut near 0.5 s (about 10 tokens), not at 2,000
        await asyncio.wait_for(fake_openai.hung_up.wait(), 5)
        reply = await stored_reply(parley, session(17))
        assert reply["status"] == "interrupted" and reply["content"] == text_of(events)


async def test_a_sites_own_model_keeps_the_servers_limits(tmp_path, fake_openai: FakeOpenAI):
    # The server has no model of its own (offline); the site brings one. --ai-max-answer-seconds
    # still holds for it, not the built-in 120 s.
    fake_openai.default = Plan(tokens=[f"t{n} " for n in range(2000)], delay=0.05)
    async for parley in start_parley(tmp_path, ai_max_answer_seconds=0.5, ai_backoff=0.01):
        site = parley.site
        await parley.services.sites.update_settings(site.id, {**site.settings, "ai": {
            "base_url": fake_openai.base_url, "model": "m", "api_key": "sk-site"}})
        events = await asyncio.wait_for(parley.ask(session(19), "Do you ship to Canada?"), 20)
        assert types(events)[-2:] == ["error", "done"] and "chunk" in types(events)
        assert len(text_of(events).split()) < 100  # cut near 0.5 s, not at 2,000 tokens


async def test_an_answer_past_the_length_cap_is_cut(tmp_path, fake_openai: FakeOpenAI, monkeypatch):
    monkeypatch.setattr(openai_compat, "MAX_ANSWER_CHARS", 50)
    fake_openai.default = Plan(tokens=["0123456789"] * 20)
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="m",
                                     ai_backoff=0.01):
        events = await asyncio.wait_for(parley.ask(session(18), "Do you ship to Canada?"), 20)
        assert types(events)[-2:] == ["error", "done"]
        assert len(text_of(events)) <= 50
