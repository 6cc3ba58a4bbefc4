"""The operator's day in a real Chromium: sign in, watch a visitor's question arrive and the AI
answer stream, take over, reply (the visitor's held request hears it at once), visitor text stays
text, and a server restart loses nothing on screen."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import tornado.httpserver
import tornado.netutil
from argon2 import PasswordHasher, profiles
from playwright.async_api import Browser, expect

from server.accounts import AccountService
from server.app import Services, build_services, make_app
from server.config import Config
from server.demo import ensure_demo_site
from server.store.models import Site
from tests.e2e.browser import ROOT, Visit, visit
from tests.providers import GatedProvider
from tests.waiting import until_held

DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
PASSWORD = "correct horse battery"
XSS = "<img src=x onerror=\"document.title='pwned'\">"


class Server:
    """A Parley the test can stop and start again on the same port, as a restart would."""

    def __init__(self, data_dir: Path) -> None:
        self.config = dataclasses.replace(Config(data_dir=data_dir), offline_chunk_delay=0.05,
                                          event_poll_interval=0.05)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.services: Services | None = None
        self._http: tornado.httpserver.HTTPServer | None = None

    async def start(self) -> Services:
        services = await build_services(self.config)
        services.accounts = AccountService(services.store,
                                           hasher=PasswordHasher.from_parameters(profiles.CHEAPEST))
        self._http = tornado.httpserver.HTTPServer(make_app(services))
        self._http.add_sockets(tornado.netutil.bind_sockets(self.port, "127.0.0.1"))
        self.services = services
        return services

    async def stop(self) -> None:
        assert self._http is not None and self.services is not None
        self._http.stop()
        await self.services.chat.shutdown()
        await self._http.close_all_connections()
        await self.services.close()
        self._http = self.services = None


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = Server(tmp_path)
    await running.start()
    try:
        yield running
    finally:
        if running.services is not None:
            await running.stop()


async def held_operator_messages(client: httpx.AsyncClient, site_key: str, session_id: str,
                                 after: int) -> tuple[float, dict]:
    response = await client.get("/api/v1/chat/operator-messages", params={
        "site_key": site_key, "session_id": session_id, "after": after, "wait": 20})
    return time.monotonic(), response.json()


async def shot(page: Visit, name: str) -> None:
    await page.screenshot(f"dashboard-{name}")


async def test_an_operator_watches_takes_over_and_replies(server: Server, browser: Browser):
    services = server.services
    assert services is not None
    site, _ = await ensure_demo_site(services.sites, services.store)
    await services.accounts.create("ana@example.com", "Ana", "admin", PASSWORD)
    await services.store.save_canned_reply(site.id, "hi", "Hi, I'm Ana. Anything else?")
    provider = GatedProvider(["Yes, we ship ", "to Canada, ", "in 4 to 7 days."])
    services.ai.default_provider = provider
    visitor_session = "sess_e2edashboard000001"

    # Sign in.
    ops = await visit(browser, f"{server.base_url}/dashboard/", viewport={"width": 1280, "height": 720})
    await expect(ops.page).to_have_url(f"{server.base_url}/dashboard/login?next=%2Fdashboard%2F")
    await ops.page.get_by_label("Email").fill("ana@example.com")
    await ops.page.get_by_label("Password").fill(PASSWORD)
    await ops.page.get_by_role("button", name="Sign in").click()
    await expect(ops.page.locator("#live-state")).to_have_text("Live", timeout=10_000)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        # A visitor asks; the conversation appears without a reload.
        ask = asyncio.create_task(client.post("/api/v1/chat/stream", json={
            "site_key": site.site_key, "session_id": visitor_session,
            "message": "Do you ship to Canada?", "page_url": "https://shop.example/shipping"}))
        await asyncio.wait_for(provider.started.wait(), 10)
        row = ops.page.locator(".conversation-list a").first
        await expect(row).to_contain_text("Do you ship to Canada?", timeout=5_000)
        await row.click()
        await expect(ops.page.locator("#messages")).to_contain_text("Do you ship to Canada?")

        # The AI's answer grows in the view, token by token.
        streaming = ops.page.locator(".msg.streaming .text")
        provider.release()
        await expect(streaming).to_have_text("Yes, we ship ", timeout=5_000)
        provider.release()
        await expect(streaming).to_have_text("Yes, we ship to Canada, ", timeout=5_000)
        provider.release()
        await expect(ops.page.locator(".msg.ai .text")).to_have_text(
            "Yes, we ship to Canada, in 4 to 7 days.", timeout=5_000)
        await expect(ops.page.locator(".msg.streaming")).to_have_count(0)
        await ask

        # Blocking offers only what is known of this visitor: no email yet, so not by email.
        await ops.page.locator("#act-block").click()
        dialog = ops.page.locator("#block-dialog")
        await expect(dialog.get_by_label("This session")).to_be_visible()
        await expect(dialog.get_by_label("Their email")).to_be_hidden()
        await expect(dialog.locator("#block-minutes option").last).to_have_text("Until unblocked")
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()

        # Take over, then reply; the visitor's held request hears it at once.
        await ops.page.get_by_role("button", name="Take over").click()
        await expect(ops.page.get_by_role("button", name="Hand back to AI")).to_be_visible()
        history = (await client.get("/api/v1/chat/history", params={
            "site_key": site.site_key, "session_id": visitor_session})).json()
        assert history["mode"] == "operator"
        last_id = history["messages"][-1]["id"]
        held = asyncio.create_task(held_operator_messages(client, site.site_key, visitor_session, last_id))
        await until_held(services, site.id, visitor_session)
        # The reply is a canned one: '/' and its shortcut, Enter picks it, Enter sends it.
        reply = ops.page.locator("#reply")
        await reply.press_sequentially("/hi")
        await expect(ops.page.locator("#canned li[aria-selected=true]")).to_contain_text("/hi")
        await reply.press("Enter")
        await expect(reply).to_have_value("Hi, I'm Ana. Anything else?")
        sent_at = time.monotonic()
        await reply.press("Enter")
        heard_at, heard = await asyncio.wait_for(held, 10)
        assert [m["content"] for m in heard["messages"]] == ["Hi, I'm Ana. Anything else?"]
        assert heard_at - sent_at < 1.0, f"the visitor heard the reply after {heard_at - sent_at:.2f} s"
        await expect(ops.page.locator(".msg.operator .text")).to_have_text("Hi, I'm Ana. Anything else?")
        await shot(ops, "conversation")
        if os.environ.get("PARLEY_UPDATE_DOCS") == "1" or not DOCS_SCREENSHOT.exists():
            await ops.page.screenshot(path=str(DOCS_SCREENSHOT))

        # Visitor text is text: markup shows as typed and runs nothing.
        await client.post("/api/v1/chat/stream", json={
            "site_key": site.site_key, "session_id": "sess_e2edashboard000002", "message": XSS})
        hostile = ops.page.locator(".conversation-list a", has_text="<img src=x")
        await expect(hostile).to_be_visible(timeout=5_000)
        await hostile.click()
        await expect(ops.page.locator("#messages .msg.visitor .text")).to_have_text(XSS)
        assert await ops.page.locator("#messages img, .conversation-list img").count() == 0
        assert "pwned" not in await ops.page.title()

        # A visitor asks for a person: the inbox says so, and why, without a reload.
        await client.post("/api/v1/chat/stream", json={
            "site_key": site.site_key, "session_id": "sess_e2edashboard000003",
            "message": "I want to talk to a human"})
        asking = ops.page.locator(".conversation-list a", has_text="Visitor 000003")
        await expect(asking.locator(".tag.handoff")).to_have_text(
            "needs a person: the visitor asked for a person", timeout=5_000)
        await shot(ops, "inbox")
    assert ops.unexpected_errors() == []
    assert ops.dialogs == []


async def one_conversation(server: Server, session_id: str, text: str) -> Site:
    """The demo site, the admin Ana, and one conversation in which Ana wrote `text`."""
    services = server.services
    assert services is not None
    site, _ = await ensure_demo_site(services.sites, services.store)
    await services.accounts.create("ana@example.com", "Ana", "admin", PASSWORD)
    await services.operators.say(site, session_id, text, operator_name="Ana")
    return site


async def test_a_restart_while_the_inbox_is_open_loses_nothing(server: Server, browser: Browser):
    session_id = "sess_e2erestart00000001"
    site = await one_conversation(server, session_id, "Hello from before")

    ops = await visit(browser, f"{server.base_url}/dashboard/login")
    await ops.page.get_by_label("Email").fill("ana@example.com")
    await ops.page.get_by_label("Password").fill(PASSWORD)
    await ops.page.get_by_role("button", name="Sign in").click()
    await expect(ops.page.locator("#live-state")).to_have_text("Live", timeout=10_000)
    await ops.page.locator(".conversation-list a").first.click()
    await expect(ops.page.locator("#messages")).to_contain_text("Hello from before")

    await server.stop()
    await expect(ops.page.locator("#live-state")).to_have_text("Reconnecting…", timeout=10_000)
    # Meanwhile another process (the CLI, a second server) stores a message.
    meanwhile = await build_services(server.config)
    try:
        await meanwhile.operators.say(site, session_id, "Sent while the server was down",
                                      operator_name="Bo")
    finally:
        await meanwhile.close()
    await server.start()
    await expect(ops.page.locator("#live-state")).to_have_text("Live", timeout=20_000)
    await expect(ops.page.locator("#messages")).to_contain_text("Sent while the server was down",
                                                                timeout=10_000)
    await expect(ops.page.locator(".conversation-list a").first).to_contain_text(
        "Sent while the server was down")
    await shot(ops, "after-restart")
    unexpected = ops.unexpected_errors(allowed=r"ERR_CONNECTION_REFUSED|net::|EventSource|Failed to load")
    assert unexpected == []


async def test_on_a_phone_the_visitors_details_open_over_the_conversation(server: Server, browser: Browser):
    session_id = "sess_e2ephone0000000001"
    await one_conversation(server, session_id, "Hello from the team")
    ops = await visit(browser, f"{server.base_url}/dashboard/login", viewport={"width": 390, "height": 800})
    await ops.page.get_by_label("Email").fill("ana@example.com")
    await ops.page.get_by_label("Password").fill(PASSWORD)
    await ops.page.get_by_role("button", name="Sign in").click()
    await ops.page.locator(".conversation-list a").first.click()
    details, toggle = ops.page.locator("#details"), ops.page.locator("#show-details")
    await expect(details).to_be_hidden()
    await toggle.click()
    await expect(details).to_be_visible()
    await expect(details).to_contain_text(session_id)
    await shot(ops, "phone-details")
    await ops.page.get_by_role("button", name="Close the visitor's details").click()
    await expect(details).to_be_hidden()
    assert ops.unexpected_errors() == []


async def test_two_operators_on_one_conversation_see_each_other_at_once(server: Server, browser: Browser):
    await one_conversation(server, "sess_e2eviewing00000001", "Hello from the team")
    assert server.services is not None
    await server.services.accounts.create("bo@example.com", "Bo", "admin", PASSWORD)

    async def opens_the_conversation(email: str) -> Visit:
        ops = await visit(browser, f"{server.base_url}/dashboard/login")
        await ops.page.clock.install()
        await ops.page.get_by_label("Email").fill(email)
        await ops.page.get_by_label("Password").fill(PASSWORD)
        await ops.page.get_by_role("button", name="Sign in").click()
        await expect(ops.page.locator("#live-state")).to_have_text("Live", timeout=10_000)
        # The page's timers stop here: no 20-second "still viewing" comes while the test runs.
        await ops.page.clock.pause_at(time.time() * 1000 + 1000)
        await ops.page.locator(".conversation-list a").first.click()
        await expect(ops.page.locator("#messages")).to_contain_text("Hello from the team")
        return ops

    ana = await opens_the_conversation("ana@example.com")
    bo = await opens_the_conversation("bo@example.com")  # signed in after Ana opened it
    await expect(ana.page.locator("#c-viewers")).to_have_text("Also viewing: Bo", timeout=10_000)
    # Ana's tab answers Bo's arrival at once, so Bo knows he is not alone before either replies.
    await expect(bo.page.locator("#c-viewers")).to_have_text("Also viewing: Ana", timeout=10_000)
    assert ana.unexpected_errors() == [] and bo.unexpected_errors() == []


async def test_the_inbox_keeps_up_with_a_site_that_never_pauses(server: Server, browser: Browser):
    """Live events 100 ms apart, with no lull of 150 ms, still refresh the list. The page's timers
    run on the test's clock: an event, then 100 ms of the page's time, eight times over."""
    site = await one_conversation(server, "sess_e2ebusysite0000001", "Hello from the team")
    ops = await visit(browser, f"{server.base_url}/dashboard/login")
    await ops.page.clock.install()
    await ops.page.get_by_label("Email").fill("ana@example.com")
    await ops.page.get_by_label("Password").fill(PASSWORD)
    await ops.page.get_by_role("button", name="Sign in").click()
    await expect(ops.page.locator("#live-state")).to_have_text("Live", timeout=10_000)
    await expect(ops.page.locator(".conversation-list a")).to_have_count(1)
    await ops.page.clock.pause_at(time.time() * 1000 + 1000)
    announcer = ops.page.locator("#announcer")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        for n in range(8):
            await ops.page.evaluate("document.getElementById('announcer').textContent = ''")
            await client.post("/api/v1/chat/stream", json={
                "site_key": site.site_key, "session_id": "sess_e2ebusysite0000077", "message": f"Question {n}"})
            # The page has had the visitor's message event (and scheduled a refresh).
            await expect(announcer).to_have_text("A visitor wrote in another conversation.")
            await ops.page.clock.run_for(100)
    await expect(ops.page.locator(".conversation-list a", has_text="Visitor 000077")).to_be_visible(timeout=5_000)
    assert ops.unexpected_errors() == []


async def test_a_nudge_being_typed_survives_the_visitors_list_refreshing(server: Server, browser: Browser):
    first, second = "sess_e2enudgefirst00001", "sess_e2enudgesecond0001"
    site = await one_conversation(server, first, "Hello from the team")
    nudge = "Hi! Can I help you pick a jacket?"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        async def browse(session_id: str) -> list[dict]:
            response = await client.get("/api/v1/chat/pending-proactive", params={
                "site_key": site.site_key, "session_id": session_id, "page_url": "https://shop.test/jackets"})
            return response.json()["messages"]

        await browse(first)
        ops = await visit(browser, f"{server.base_url}/dashboard/login")
        await ops.page.get_by_label("Email").fill("ana@example.com")
        await ops.page.get_by_label("Password").fill(PASSWORD)
        await ops.page.get_by_role("button", name="Sign in").click()
        await ops.page.goto(f"{server.base_url}/dashboard/visitors")
        box = ops.page.get_by_label(f"Message to Visitor {first[-6:]}")
        await box.fill(nudge)
        # Another visitor arrives: the list refreshes with a row for them.
        await browse(second)
        await expect(ops.page.locator("#visitor-rows tr")).to_have_count(2, timeout=10_000)
        await expect(box).to_have_value(nudge)
        await expect(box).to_be_focused()
        await box.press("Enter")
        await expect(box).to_have_attribute("placeholder", "Sent.")
        assert [m["content"] for m in await browse(first)] == [nudge]
    assert ops.unexpected_errors() == []


async def test_the_assign_menu_offers_only_operators_who_may_take_the_conversation(server: Server,
                                                                                   browser: Browser):
    site = await one_conversation(server, "sess_e2eassign000000001", "Hello from the team")
    assert server.services is not None
    other = await server.services.sites.create("Another shop")
    await server.services.accounts.create("bo@example.com", "Bo", "agent", PASSWORD, [other.id])
    await server.services.accounts.create("cy@example.com", "Cy", "agent", PASSWORD, [site.id])
    ops = await visit(browser, f"{server.base_url}/dashboard/login")
    await ops.page.get_by_label("Email").fill("ana@example.com")
    await ops.page.get_by_label("Password").fill(PASSWORD)
    await ops.page.get_by_role("button", name="Sign in").click()
    await ops.page.locator(".conversation-list a").first.click()
    menu = ops.page.locator("#act-assign")
    await expect(menu.locator("option", has_text="Cy")).to_be_enabled()
    await expect(menu.locator("option", has_text="Bo")).to_be_disabled()
    await menu.select_option(label="Cy")
    await expect(ops.page.locator(".conversation-list")).to_contain_text("assigned")
    assert ops.unexpected_errors() == [] and ops.dialogs == []
