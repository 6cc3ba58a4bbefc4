"""Per-site caps on AI replies and input length: past a cap the visitor is told so, and offered a person."""

from __future__ import annotations

from typing import Any

from tests.fake_openai import FakeOpenAI
from tests.harness import Parley, session


def text_of(events: list[dict]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "chunk")


async def set_caps(parley: Parley, **caps: Any) -> None:
    site = parley.site
    await parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"caps": caps}})


async def test_replies_per_session_per_hour(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_caps(ai_parley, replies_per_session_hour=2)
    for _ in range(2):
        events = await ai_parley.ask(session(1), "Do you ship to Canada?")
        assert text_of(events) == "Hello from the model."
    events = await ai_parley.ask(session(1), "Do you ship to Canada?")
    assert "limit of answers" in text_of(events) and "talk to a person" in text_of(events)
    assert events[-1]["type"] == "done" and events[-1]["meta"]["handoff"] is True
    assert len(fake_openai.calls) == 2
    # The notice is not an AI answer: it is stored as a system message and does not count.
    history = (await ai_parley.get("history", **ai_parley.ids(session(1)))).json()["messages"]
    assert [m["role"] for m in history][-2:] == ["visitor", "system"]
    # Another visitor of the same site is not affected.
    events = await ai_parley.ask(session(2), "Do you ship to Canada?")
    assert text_of(events) == "Hello from the model."


async def test_replies_per_site_per_day(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_caps(ai_parley, replies_per_site_day=2, replies_per_session_hour=None)
    await ai_parley.ask(session(3), "Do you ship to Canada?")
    await ai_parley.ask(session(4), "Do you ship to Canada?")
    events = await ai_parley.ask(session(5), "Do you ship to Canada?", lang="es")
    assert "no puede responder más preguntas hoy" in text_of(events)
    assert events[-1]["meta"]["handoff"] is True
    assert len(fake_openai.calls) == 2


async def test_input_length(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_caps(ai_parley, max_input_chars=40)
    events = await ai_parley.ask(session(6), "Do you ship to Canada? " * 3)
    assert "too long for the assistant (at most 40 characters)" in text_of(events)
    assert events[-1]["meta"]["handoff"] is False
    assert fake_openai.calls == []
    events = await ai_parley.ask(session(6), "Do you ship to Canada?")
    assert text_of(events) == "Hello from the model."


async def test_a_request_for_a_person_still_works_past_a_cap(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_caps(ai_parley, replies_per_session_hour=0)
    events = await ai_parley.ask(session(7), "I want to talk to a person")
    assert "passing you to a person" in text_of(events)
    assert events[-1]["meta"]["handoff"] is True
