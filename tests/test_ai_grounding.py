"""What the model is sent (passages, turns, language, redaction) and the handoff rule around it."""

from __future__ import annotations

from typing import Any

from server.ai.offline import OfflineAnswerer
from server.ai.openai_compat import OpenAICompatible
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import Parley, session


def text_of(events: list[dict]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "chunk")


async def set_ai(parley: Parley, **ai: Any) -> None:
    site = parley.site
    await parley.services.sites.update_settings(site.id, {**site.settings, "ai": ai})


def system_prompt(fake: FakeOpenAI, call: int = -1) -> str:
    return fake.requests[call]["messages"][0]["content"]


async def test_offline_answerer_is_the_default_with_nothing_configured(parley: Parley):
    assert isinstance(parley.services.ai.default_provider, OfflineAnswerer)
    events = await parley.ask(session(1), "Do you ship to Canada?")
    assert text_of(events).startswith("Here is what I found")


async def test_sources_are_the_passages_given_to_the_model(ai_parley: Parley, fake_openai: FakeOpenAI):
    events = await ai_parley.ask(session(2), "Do you ship to Canada?")
    sources = events[-1]["meta"]["sources"]
    assert {"title": "Shipping", "url": "https://shop.test/shipping"} in sources
    prompt = system_prompt(fake_openai)
    for number, source in enumerate(sources, 1):
        assert f"[{number}] {source['title']} ({source['url']})" in prompt
    assert f"[{len(sources) + 1}]" not in prompt
    assert "Orders to Canada arrive in 4 to 7 business days" in prompt


async def test_the_answer_language_follows_the_visitor(ai_parley: Parley, fake_openai: FakeOpenAI):
    await ai_parley.ask(session(3), "Livrez-vous au Canada ?", lang="fr-CA")
    assert "BCP 47 tag: fr-CA" in system_prompt(fake_openai)


async def test_recent_turns_are_in_the_prompt(ai_parley: Parley, fake_openai: FakeOpenAI):
    await ai_parley.ask(session(4), "Do you ship to Canada?")
    await ai_parley.ask(session(4), "How much does it cost?")
    messages = fake_openai.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Do you ship to Canada?"
    assert messages[2]["content"] == "Hello from the model."
    assert messages[3]["content"] == "How much does it cost?"


async def test_history_is_bounded_in_tokens(ai_parley: Parley, fake_openai: FakeOpenAI):
    long = "Tell me about shipping. " + "x" * 3500
    for _ in range(3):
        await ai_parley.ask(session(5), long)
    messages = fake_openai.requests[-1]["messages"]
    history = messages[1:-1]
    assert sum(len(m["content"]) for m in history) <= 1500 * 4
    assert len(history) < 4  # older turns were dropped to fit


async def test_page_context_reaches_the_model(ai_parley: Parley, fake_openai: FakeOpenAI):
    await ai_parley.ask(session(6), "Is this in stock?", page_title="Rain jacket",
                        page_url="https://shop.test/p/rain-jacket")
    question = fake_openai.requests[-1]["messages"][-1]["content"]
    assert "Rain jacket" in question and "https://shop.test/p/rain-jacket" in question


async def test_asking_for_a_human_hands_over_without_calling_the_model(ai_parley: Parley,
                                                                       fake_openai: FakeOpenAI):
    events = await ai_parley.ask(session(7), "Can I talk to a human please?")
    assert events[-1]["meta"]["handoff"] is True
    assert fake_openai.calls == []
    conversation = await ai_parley.services.store.get_conversation(ai_parley.site.id, session(7))
    assert conversation.handoff is True


async def test_site_handoff_phrases_in_another_language(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_ai(ai_parley, handoff_phrases=["mit jemandem reden"])
    events = await ai_parley.ask(session(8), "Kann ich mit jemandem reden?", lang="de")
    assert events[-1]["meta"]["handoff"] is True
    assert "Menschen aus dem Team" in text_of(events)
    assert fake_openai.calls == []


async def test_the_models_handoff_marker_is_removed_and_hands_over(ai_parley: Parley,
                                                                    fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["I can't help with that. ", "[", "[HAND", "OFF]", "]"]))
    events = await ai_parley.ask(session(9), "Can you fix my broken order?")
    chunks = [e["content"] for e in events if e["type"] == "chunk"]
    assert "".join(chunks) == "I can't help with that. "
    assert not any("[" in chunk for chunk in chunks)
    assert events[-1]["meta"]["handoff"] is True


async def test_a_bracket_that_is_not_the_marker_is_still_shown(ai_parley: Parley, fake_openai: FakeOpenAI):
    fake_openai.script(Plan(tokens=["See [", "1] and [[", "2]]"]))
    events = await ai_parley.ask(session(10), "Do you ship to Canada?")
    assert text_of(events) == "See [1] and [[2]]"
    assert events[-1]["meta"]["handoff"] is False


async def test_unsure_hands_over_when_the_site_says_so(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_ai(ai_parley, handoff_when_unsure=True)
    events = await ai_parley.ask(session(11), "Quelle est la couleur du ciel martien?")
    assert events[-1]["meta"]["sources"] == []
    assert events[-1]["meta"]["handoff"] is True
    assert "(no passage of the help pages matches this question)" in system_prompt(fake_openai)
    assert "has already been asked to reply here" in system_prompt(fake_openai)


async def test_a_passage_below_the_relevance_floor_is_not_sent(ai_parley: Parley, fake_openai: FakeOpenAI):
    # "ship" matches the shipping page, but nothing there is about shipping cats to Mars.
    events = await ai_parley.ask(session(13), "Can you ship my cat to Mars by rocket?")
    assert events[-1]["meta"]["sources"] == []
    prompt = system_prompt(fake_openai)
    assert "(no passage of the help pages matches this question)" in prompt
    assert "Orders to Canada" not in prompt
    assert "say \"I don't know\" plainly" in prompt
    assert "has already been asked to reply here" not in prompt  # the site hands nothing over


async def test_redaction_hides_personal_data_from_the_model_only(ai_parley: Parley, fake_openai: FakeOpenAI):
    await set_ai(ai_parley, redact_pii=True)
    message = ("Refund to card 4111 1111 1111 1111 please, write to jane.doe@example.com "
               "or call +1 415 555 0100 about the order from 2024-01-15")
    await ai_parley.ask(session(12), message)
    await ai_parley.ask(session(12), "Any news?")
    sent = " ".join(m["content"] for m in fake_openai.requests[-1]["messages"])
    for secret in ("4111", "jane.doe@example.com", "555 0100"):
        assert secret not in sent
    assert "[card number]" in sent and "[email]" in sent and "[phone]" in sent
    assert "2024-01-15" in sent
    history = (await ai_parley.get("history", **ai_parley.ids(session(12)))).json()["messages"]
    assert history[0]["content"] == message  # the stored conversation keeps the original


async def test_without_redaction_the_model_sees_the_message(ai_parley: Parley, fake_openai: FakeOpenAI):
    await ai_parley.ask(session(13), "Write to jane.doe@example.com")
    assert fake_openai.requests[-1]["messages"][-1]["content"] == "Write to jane.doe@example.com"


async def test_site_model_overrides_the_global_offline_answerer(parley: Parley, fake_openai: FakeOpenAI):
    await set_ai(parley, base_url=fake_openai.base_url, model="site-model", api_key="sk-site-key-123456",
                 temperature=0.1, max_tokens=200, system_prompt="You are {site_name}'s bot.")
    events = await parley.ask(session(14), "Do you ship to Canada?")
    assert text_of(events) == "Hello from the model."
    body = fake_openai.requests[-1]
    assert body["model"] == "site-model" and body["temperature"] == 0.1 and body["max_tokens"] == 200
    assert body["messages"][0]["content"].startswith("You are Test shop's bot.")
    assert fake_openai.calls[-1].headers["Authorization"] == "Bearer sk-site-key-123456"
    # One cached provider per configuration.
    registry_hook = parley.services.ai.provider
    assert registry_hook(parley.site) is not None
    site = await parley.services.store.get_site_by_key(parley.site_key)
    assert isinstance(registry_hook(site), OpenAICompatible)
    assert registry_hook(site) is registry_hook(site)


async def test_the_ai_is_silent_while_an_operator_has_the_conversation(ai_parley: Parley,
                                                                        fake_openai: FakeOpenAI):
    await ai_parley.ask(session(15), "Do you ship to Canada?")
    await ai_parley.services.operators.set_mode(ai_parley.site, session(15), "operator")
    events = await ai_parley.ask(session(15), "Hello? Anyone?")
    assert [e["type"] for e in events] == ["done"]
    assert events[0]["meta"]["mode"] == "operator"
    assert len(fake_openai.calls) == 1


def test_human_phrases_match_whole_words_only():
    from server.ai.phrases import asks_for_human

    assert asks_for_human("Can I TALK to a   human?")
    assert asks_for_human("need an operator now")
    assert not asks_for_human("we are a cooperator shop")
    assert asks_for_human("bitte mit Mensch reden", ["mit mensch"])
