"""The widget when the network or the server says no: retries that never double, friendly waits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Route, expect

from server.chat import Limits
from server.demo import ensure_demo_site
from server.ratelimit import Rate
from server.store.models import Site
from tests.e2e.browser import visit
from tests.harness import Parley, start_parley
from tests.providers import GatedProvider
from tests.waiting import until_held, until_none_held


async def visitor_messages(parley: Parley, site: Site, session_id: str) -> list[str]:
    response = await parley.get("history", site_key=site.site_key, session_id=session_id)
    return [m["content"] for m in response.json()["messages"] if m["role"] == "visitor"]


async def test_a_dropped_connection_is_retried_with_the_same_message_id(
        parley: Parley, demo: Site, browser: Browser) -> None:
    v = await visit(browser, f"{parley.base_url}/demo")
    sent: list[dict[str, Any]] = []

    async def drop_the_first(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        if len(sent) == 1:
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await v.page.route("**/api/v1/chat/stream", drop_the_first)
    await v.open_chat()
    await v.ask("Do you ship to Canada?")
    await expect(v.widget(".msg.bot .src").last).to_be_visible(timeout=10_000)
    await expect(v.widget(".notice")).to_be_hidden()
    assert len(sent) == 2 and sent[0]["message_id"] == sent[1]["message_id"]
    assert await visitor_messages(parley, demo, await v.session_id()) == ["Do you ship to Canada?"]
    await expect(v.widget(".msg.visitor")).to_have_count(1)
    assert v.unexpected_errors(allowed=r"ERR_CONNECTION_RESET") == []


async def test_too_many_messages_show_a_friendly_wait_then_go_through(
        tmp_path: Path, browser: Browser) -> None:
    one_a_second = Limits(messages_per_session=Rate(burst=1, per_minute=60))
    async for parley in start_parley(tmp_path, limits=one_a_second, offline_chunk_delay=0.0):
        await ensure_demo_site(parley.services.sites, parley.services.store)
        v = await visit(browser, f"{parley.base_url}/demo")
        await v.open_chat()
        await v.ask("Do you ship to Canada?")
        await expect(v.widget(".msg.bot .src")).to_have_count(1, timeout=10_000)
        await v.ask("How long do refunds take?")
        await expect(v.widget(".notice")).to_contain_text("Please wait 1 s")
        await v.screenshot("rate-limited")
        await expect(v.widget(".msg.bot .src")).to_have_count(2, timeout=5_000)
        await expect(v.widget(".notice")).to_be_hidden()
        assert v.unexpected_errors(allowed=r"status of 429") == []


SET_HIDDEN = """hidden => {
  Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
  document.dispatchEvent(new Event('visibilitychange'));
}"""


async def test_a_hidden_tab_pauses_and_catches_up_once_visible(
        parley: Parley, demo: Site, browser: Browser) -> None:
    v = await visit(browser, f"{parley.base_url}/demo")
    await v.open_chat()
    session_id = await v.session_id()
    await until_held(parley.services, demo.id, session_id, 2)
    await v.page.evaluate(SET_HIDDEN, True)
    await until_none_held(parley.services, demo.id, session_id)  # hidden: nothing is listening
    await parley.services.operators.say(demo, session_id, "While you were away", operator_name="Ana")
    await expect(v.widget(".msg.operator")).to_have_count(0)

    await v.page.evaluate(SET_HIDDEN, False)
    await expect(v.widget(".msg.operator")).to_have_count(1, timeout=2_000)
    await parley.services.operators.say(demo, session_id, "Welcome back", operator_name="Ana")
    await expect(v.widget(".msg.operator")).to_have_text(["AnaWhile you were away", "AnaWelcome back"],
                                                         timeout=2_000)
    assert v.unexpected_errors() == []


async def test_an_answer_that_fails_midway_is_asked_again_without_a_second_question(
        parley: Parley, demo: Site, browser: Browser) -> None:
    failing = GatedProvider(["Half an answer ", "never"], fail_after=1)
    failing.release()
    parley.services.ai.default_provider = failing
    v = await visit(browser, f"{parley.base_url}/demo")
    await v.open_chat()
    await v.ask("Do you ship to Canada?")
    retry = v.widget(".msg.bot button").filter(has_text="Retry")
    await expect(retry).to_be_visible(timeout=5_000)
    # The AI failed: the conversation is handed to a person and the visitor may leave an email.
    await expect(v.widget(".card.email")).to_be_visible()
    working = GatedProvider(["Yes, ", "we ship to Canada."])
    working.release(2)
    parley.services.ai.default_provider = working
    await retry.click()
    await expect(v.widget(".msg.bot").last).to_contain_text("Yes, we ship to Canada.")
    await expect(v.widget(".msg.bot").filter(has_text="Half an answer")).to_have_count(0)  # replaced
    await expect(v.widget(".msg.visitor")).to_have_count(1)
    assert await visitor_messages(parley, demo, await v.session_id()) == ["Do you ship to Canada?"]
    await v.page.reload()
    await v.widget(".launcher").wait_for()
    if not await v.widget(".panel").is_visible():
        await v.open_chat()
    await expect(v.widget(".msg.bot").last).to_contain_text("Yes, we ship to Canada.")
    await expect(v.widget(".msg.visitor")).to_have_count(1)
    assert v.unexpected_errors() == []


async def test_an_answer_cut_by_a_restart_is_asked_again_by_itself(
        parley: Parley, demo: Site, browser: Browser) -> None:
    cut = GatedProvider(["Half an answer ", "never"])
    cut.release()
    parley.services.ai.default_provider = cut
    v = await visit(browser, f"{parley.base_url}/demo")
    await v.open_chat()
    await v.ask("Do you ship to Canada?")
    await expect(v.widget(".msg.bot").last).to_contain_text("Half an answer", timeout=5_000)
    working = GatedProvider(["Yes, ", "we ship to Canada."])
    working.release(2)
    parley.services.ai.default_provider = working
    answers = parley.services.chat.answers
    await answers.drain(0)  # SIGTERM with no grace left: the stream ends with `restarting`
    answers.closing = False  # ... and the retry lands on a process that is not shutting down
    await expect(v.widget(".msg.bot").last).to_contain_text("Yes, we ship to Canada.", timeout=10_000)
    await expect(v.widget(".msg.bot button").filter(has_text="Retry")).to_have_count(0)
    await expect(v.widget(".msg.visitor")).to_have_count(1)
    assert await visitor_messages(parley, demo, await v.session_id()) == ["Do you ship to Canada?"]
    assert len(working.requests) == 1
    assert v.unexpected_errors() == []


async def test_a_server_that_answers_held_reads_at_once_is_not_hammered(
        parley: Parley, demo: Site, browser: Browser) -> None:
    """A draining server answers every held read at once, with nothing: the widget backs off as it
    would after an error, rather than asking again and again (hundreds a second, seen)."""
    v = await visit(browser, "about:blank")
    asked: list[float] = []
    enough = asyncio.Event()

    async def at_once_with_nothing(route: Route) -> None:
        asked.append(time.monotonic())
        if len(asked) >= 6:
            enough.set()
        await route.fulfill(status=200, content_type="application/json",
                            body=json.dumps({"success": True, "messages": [], "mode": "ai"}))

    # Routed before the page loads: a held read the widget starts first would reach the server
    # and be held its 25 s (seen on a loaded machine).
    await v.page.route("**/api/v1/chat/history?*wait=*", at_once_with_nothing)
    await v.page.goto(f"{parley.base_url}/demo")
    await v.open_chat()
    await asyncio.wait_for(enough.wait(), 30)
    # Three at once (each could be news: a takeover, a block), then 0.5-1 s, 1-2 s and 2-4 s apart.
    assert asked[5] - asked[0] >= 3.0, [round(t - asked[0], 2) for t in asked]


async def test_a_message_typed_while_the_server_is_unreachable_goes_once_it_is_back(
        parley: Parley, demo: Site, browser: Browser) -> None:
    """After its tries the message says the chat cannot be reached (not that the answer failed),
    and goes by itself when the server answers again: the visitor need not notice the outage."""
    v = await visit(browser, "about:blank")
    await v.page.clock.install()  # the widget's backoff timers run when the test says
    await v.page.goto(f"{parley.base_url}/demo")
    down = True

    async def unreachable(route: Route) -> None:
        await (route.abort("connectionrefused") if down else route.continue_())

    await v.open_chat()
    await v.page.route("**/api/v1/chat/*", unreachable)
    await v.ask("Do you ship to Canada?")
    note = v.widget(".msg.visitor .note")
    for _ in range(100):  # five tries, 0.5 s to 16 s apart
        if await note.count():
            break
        await v.page.clock.run_for(1_000)
    await expect(note).to_contain_text("The chat cannot be reached; it will go as soon as it can.")
    down = False
    answer = v.widget(".msg.bot .src")
    for _ in range(100):  # the history loop's next try, at most 30 s on
        if await answer.count():
            break
        await v.page.clock.run_for(1_000)
    await expect(answer).to_have_count(1, timeout=10_000)
    await expect(note).to_have_count(0)
    assert await visitor_messages(parley, demo, await v.session_id()) == ["Do you ship to Canada?"]
    assert v.unexpected_errors(allowed=r"ERR_CONNECTION_REFUSED") == []
