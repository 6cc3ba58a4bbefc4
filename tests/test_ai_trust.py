"""Never leave a visitor waiting: one deadline for the first token, a person offered when the AI
fails, and every AI answer remembering how well the site's knowledge covered its question."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from server.ai.knowledge import RELEVANCE_FLOOR
from server.hub import site_topic
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import Parley, session, start_parley


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


async def test_one_deadline_across_all_retries_then_a_person_is_offered(tmp_path, fake_openai: FakeOpenAI):
    # Without the overall deadline this would wait 3 x 30 s plus backoff before the error.
    fake_openai.default = Plan(stall_after=0)
    async for parley in start_parley(tmp_path, ai_base_url=fake_openai.base_url, ai_model="m",
                                     ai_first_token_timeout=30.0, ai_attempts=3, ai_backoff=0.01,
                                     ai_deadline=0.5):
        site = parley.site
        async with parley.services.hub.subscribe(site_topic(site.id)) as operators:
            started = time.monotonic()
            events = await asyncio.wait_for(parley.ask(session(1), "Do you ship to Canada?"), 20)
            elapsed = time.monotonic() - started
            assert types(events) == ["error", "done"]
            assert "taking too long" in events[0]["error"] and events[0]["code"] == "unavailable"
            assert events[-1]["meta"]["handoff"] is True
            assert elapsed < 15  # one 0.5 s deadline, not 90 s of attempts
            await operators.wait(5)
            handoffs = [e for e in operators.drain() if e.get("kind") == "handoff"]
        assert handoffs == [{"kind": "handoff", "session_id": session(1), "reason": "ai_failed",
                             "why": "the AI could not answer (model error or timeout)"}]
        conversation = await parley.services.store.get_conversation(site.id, session(1))
        assert conversation is not None and conversation.handoff_reason == "ai_failed"
        await asyncio.wait_for(fake_openai.hung_up.wait(), 5)  # the stalled upstream was let go


async def test_a_refused_model_hands_the_visitor_to_a_person(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(status=401, error_body='{"error": {"message": "bad key"}}'))
    events = await ai_parley.ask(session(2), "Do you ship to Canada?")
    assert types(events) == ["error", "done"] and events[-1]["meta"]["handoff"] is True


async def test_each_answer_stores_its_relevance_and_the_gaps_are_listed(parley: Parley):
    await parley.ask(session(4), "Hello there!")  # asks nothing, so no gap
    await parley.ask(session(4), "Do you ship to Canada?")
    await parley.ask(session(4), "Do you sell gift cards for birthdays?")
    store = parley.services.store
    conversation = await store.get_conversation(parley.site.id, session(4))
    answers = [m for m in await store.list_messages(conversation.id) if m.role == "ai"][1:]
    assert answers[0].relevance is not None and answers[0].relevance >= RELEVANCE_FLOOR
    assert answers[1].relevance is not None and answers[1].relevance < RELEVANCE_FLOOR
    await parley.ask(session(6), "do you sell gift cards for birthdays")  # the same, counted together
    gaps = await parley.services.site_knowledge.gaps(parley.site)
    assert [(g.question, g.count) for g in gaps] == [("do you sell gift cards for birthdays", 2)]
    # The site owner reads the same list from the command line (in its own process, as a person would).
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "kb", "gaps", "--site", parley.site_key, "--json",
        "--data-dir", str(parley.services.config.data_dir), stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ))
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    listed = json.loads(output)
    assert [(g["question"], g["count"]) for g in listed] == [("do you sell gift cards for birthdays", 2)]
    assert listed[0]["relevance"] < RELEVANCE_FLOOR


async def test_a_greeting_or_thanks_gets_a_reply_not_i_dont_know_nor_a_person(parley: Parley):
    site = parley.site
    await parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"handoff_when_unsure": True}})
    for question, lang, reply in (("Hello there!", "en", "Hello! What can I help you with?"),
                                  ("thanks a lot", "en", "You're welcome! Ask me anything else."),
                                  ("Bonjour", "fr", "Bonjour ! Comment puis-je vous aider ?"),
                                  # with the words people add to them
                                  ("hello again", "en", "Hello! What can I help you with?"),
                                  ("Hi, how are you?", "en", "Hello! What can I help you with?"),
                                  ("ok thanks, bye", "en", "Goodbye! Come back any time."),
                                  ("Thanks for your help!", "en", "You're welcome! Ask me anything else."),
                                  ("Hola, ¿qué tal?", "es", "¡Hola! ¿En qué puedo ayudarle?")):
        events = await parley.ask(session(5), question, lang=lang)
        assert "".join(e["content"] for e in events if e["type"] == "chunk") == reply
        assert events[-1]["meta"]["handoff"] is False
    # A real question the pages do not cover is still handed over, as the site asks, and even
    # opening with a greeting it is one.
    for question in ("Do you sell gift cards for birthdays?", "Hi, how are gift cards sent?"):
        events = await parley.ask(session(5), question)
        assert events[-1]["meta"]["handoff"] is True, question
    assert [g.question for g in await parley.services.site_knowledge.gaps(site)] == [
        "Hi, how are gift cards sent?", "Do you sell gift cards for birthdays?"]
