"""Why a conversation needs a person: the reason stored with it, shown by the dashboard's JSON
(the inbox row and the conversation), and cleared when an operator picks it up."""

from __future__ import annotations

from pathlib import Path

from tests.dashboard import Operator, sign_in
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import Parley, reopened_without_column, session
from server.store.sqlite import SQLiteStore


async def handed_over(operator: Operator, conversation_id: int) -> tuple[dict, dict]:
    """The conversation as the dashboard reads it, and its row in the inbox's 'Needs a person'."""
    detail = (await operator.api(f"conversations/{conversation_id}")).json()["conversation"]
    rows = (await operator.api("inbox", status="handoff")).json()["conversations"]
    return detail, next((row for row in rows if row["id"] == conversation_id), {})


async def test_a_failed_model_is_the_reason_shown_until_someone_takes_over(
        ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.default = Plan(status=500)  # every retry fails too
    events = await ai_parley.ask(session(1), "Do you ship to Canada?")
    assert events[-1]["meta"]["handoff"] is True
    operator = await sign_in(ai_parley, "ana@example.com")
    try:
        conversation = await ai_parley.services.store.get_conversation(ai_parley.site.id, session(1))
        detail, row = await handed_over(operator, conversation.id)
        for shown in (detail, row):
            assert (shown["handoff"], shown["handoff_reason"]) == (True, "ai_failed")
            assert shown["handoff_why"] == "the AI could not answer (model error or timeout)"
        assert (await operator.act(conversation.id, "takeover")).status_code == 200
        detail, row = await handed_over(operator, conversation.id)
        assert (detail["handoff"], detail["handoff_reason"], detail["handoff_why"]) == (False, None, None)
        assert row == {}  # no longer waiting for a person
    finally:
        await operator.client.aclose()


async def test_a_visitor_asking_for_a_person_and_an_uncovered_question_say_so(parley: Parley):
    site = parley.site
    await parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"handoff_when_unsure": True}})
    await parley.ask(session(2), "I want to talk to a human")
    await parley.ask(session(3), "Do you sell gift cards for birthdays?")
    operator = await sign_in(parley, "ana@example.com")
    try:
        store = parley.services.store
        for sid, reason, words in ((session(2), "asked_for_person", "the visitor asked for a person"),
                                   (session(3), "not_covered", "does not cover the question")):
            conversation = await store.get_conversation(site.id, sid)
            detail, row = await handed_over(operator, conversation.id)
            assert detail["handoff_reason"] == row["handoff_reason"] == reason
            assert words in detail["handoff_why"]
    finally:
        await operator.client.aclose()


async def test_a_persons_reply_or_hand_back_answers_the_handoff(parley: Parley):
    site = parley.site
    await parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"handoff_when_unsure": True}})
    store = parley.services.store
    operator = await sign_in(parley, "ana@example.com")
    try:
        for sid, action, body in ((session(7), "reply", {"text": "Hi, Ana here. How can I help?"}),
                                  (session(8), "handback", {})):
            await parley.ask(sid, "I want to talk to a human")
            conversation = await store.get_conversation(site.id, sid)
            detail, row = await handed_over(operator, conversation.id)
            assert detail["handoff"] is True and row["handoff_reason"] == "asked_for_person"
            assert (await operator.act(conversation.id, action, body)).status_code == 200
            detail, row = await handed_over(operator, conversation.id)
            assert (detail["mode"], detail["handoff"], detail["handoff_why"]) == ("ai", False, None)
            assert row == {}, f"still waiting for a person after {action}"
    finally:
        await operator.client.aclose()


async def test_the_models_own_marker_and_a_cap_are_told_apart(ai_parley: Parley, fake_openai: FakeOpenAI):
    site, store = ai_parley.site, ai_parley.services.store
    fake_openai.script(Plan(tokens=["A colleague will help ", "[[HAND", "OFF]]"]))
    events = await ai_parley.ask(session(5), "Can you change my order?")
    assert events[-1]["meta"]["handoff"] is True
    assert (await store.get_conversation(site.id, session(5))).handoff_reason == "ai_handed_over"
    await ai_parley.services.sites.update_settings(
        site.id, {**site.settings, "ai": {"caps": {"replies_per_session_hour": 0}}})
    events = await ai_parley.ask(session(6), "Do you ship to Canada?")
    assert events[-1]["meta"]["handoff"] is True
    assert (await store.get_conversation(site.id, session(6))).handoff_reason == "cap_reached"


async def test_a_data_directory_from_before_reasons_keeps_its_handoffs_without_one(tmp_path: Path):
    store = SQLiteStore(tmp_path / "parley.sqlite3")
    await store.open()
    site = await store.create_site("sk_" + "a" * 30, "Old", [], {})
    conversation = await store.ensure_conversation(site.id, session(4), {})
    await store.update_conversation(conversation.id, {"handoff": True, "handoff_reason": "ai_failed"})
    store = await reopened_without_column(store, "conversations", "handoff_reason")
    try:
        old = await store.get_conversation(site.id, session(4))
        assert (old.handoff, old.handoff_reason) == (True, None)
        await store.update_conversation(old.id, {"handoff": True, "handoff_reason": "asked_for_person"})
        assert (await store.get_conversation(site.id, session(4))).handoff_reason == "asked_for_person"
    finally:
        await store.close()
