"""In a real Chromium, the inbox with the keyboard alone and with a screen reader's ears: the
keyboard is never dropped on the page when the list is redrawn or an action's button gives way to
its opposite, live messages are announced once, single-key shortcuts can be turned off, and older
conversations can be reached past the first page."""

from __future__ import annotations

import httpx
from playwright.async_api import Browser, expect

from server.demo import ensure_demo_site
from tests.e2e.test_dashboard import PASSWORD, Server, server  # noqa: F401 - a fixture
from tests.e2e.test_dashboard_markdown import signed_in


async def test_the_inbox_works_from_the_keyboard_and_says_what_arrives(server: Server, browser: Browser):
    services = server.services
    assert services is not None
    site, _ = await ensure_demo_site(services.sites, services.store)
    await services.accounts.create("ana@example.com", "Ana", "admin", PASSWORD)
    await services.operators.say(site, "sess_keyboard000000000001", "Hello from the team", operator_name="Ana")

    ops = await signed_in(browser, f"{server.base_url}/dashboard/", "ana@example.com", PASSWORD)
    page = ops.page
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=10_000)
    link = page.locator(".conversation-list a").first
    await link.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#c-title")).to_be_focused()  # the conversation, ready to act on
    await expect(page.locator("#messages")).to_contain_text("Hello from the team")
    await page.keyboard.press("Tab")
    await expect(page.locator("#act-takeover")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#act-handback")).to_be_focused(timeout=5_000)  # not dropped on <body>

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        # The visitor writes: said once in the announcer, and the list redrawn under the keyboard
        # gives the focused link its focus back.
        await link.focus()
        await client.post("/api/v1/chat/stream", json={
            "site_key": site.site_key, "session_id": "sess_keyboard000000000001",
            "message": "Is anyone there?"})
        await expect(page.locator("#announcer")).to_contain_text("Is anyone there?", timeout=5_000)
        await expect(link).to_contain_text("Is anyone there?")
        await expect(link).to_be_focused()

    # Single-key shortcuts are on by default and can be turned off (speech input types letters).
    await page.locator("body").press("?")
    await expect(page.locator("#help-dialog")).to_be_visible()
    await page.keyboard.press("Escape")
    await page.goto(f"{server.base_url}/dashboard/account")
    shortcuts = page.get_by_label("Single-key shortcuts in the inbox", exact=False)
    await expect(shortcuts).to_be_checked()
    await shortcuts.uncheck()
    await page.goto(f"{server.base_url}/dashboard/")
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=10_000)
    await page.locator("body").press("?")
    await expect(page.locator("#help-dialog")).to_be_hidden()
    assert ops.unexpected_errors() == []


async def test_older_conversations_load_past_the_first_page(server: Server, browser: Browser):
    services = server.services
    assert services is not None
    site, _ = await ensure_demo_site(services.sites, services.store)
    await services.accounts.create("ana@example.com", "Ana", "admin", PASSWORD)
    for n in range(55):
        await services.operators.say(site, f"sess_older{n:016d}", f"Message {n}", operator_name="Ana")

    ops = await signed_in(browser, f"{server.base_url}/dashboard/", "ana@example.com", PASSWORD)
    page = ops.page
    links = page.locator(".conversation-list a")
    await expect(links).to_have_count(50, timeout=10_000)
    await page.get_by_role("button", name="Load older conversations").click()
    await expect(links).to_have_count(55)
    await expect(links.last).to_contain_text("Message 0")
    await expect(links.nth(50)).to_be_focused()  # the reading goes on at the first older one
    await expect(page.get_by_role("button", name="Load older conversations")).to_be_hidden()
    assert ops.unexpected_errors() == []


async def test_closing_the_open_conversation_keeps_its_place_until_another_is_opened(
        server: Server, browser: Browser):
    services = server.services
    assert services is not None
    site, _ = await ensure_demo_site(services.sites, services.store)
    await services.accounts.create("ana@example.com", "Ana", "admin", PASSWORD)
    for n in (1, 2, 3):
        await services.operators.say(site, f"sess_keepplace00000000{n}", f"Hello number {n}", operator_name="Ana")
    ops = await signed_in(browser, f"{server.base_url}/dashboard/", "ana@example.com", PASSWORD)
    page = ops.page
    await expect(page.locator("#live-state")).to_have_text("Live", timeout=10_000)
    rows = page.locator(".conversation-list a")
    await expect(rows).to_have_count(3)
    await rows.nth(1).click()  # "Hello number 2", in the middle
    await expect(page.locator("#messages")).to_contain_text("Hello number 2")
    async with page.expect_response(lambda r: "/dashboard/api/inbox" in r.url, timeout=10_000):
        await page.locator("#act-close").click()  # the list refreshes without it under All...
    await expect(rows).to_have_count(3)  # ...but its row stays where it was while it is open
    await expect(rows.nth(1)).to_contain_text("Hello number 2")
    await expect(rows.nth(1).locator(".tag", has_text="closed")).to_be_visible()  # as it is now
    await page.keyboard.press("j")  # and the keyboard goes on from it
    await expect(page.locator("#messages")).to_contain_text("Hello number 1")
    async with page.expect_response(lambda r: "/dashboard/api/inbox" in r.url, timeout=10_000):
        await page.locator("#act-takeover").click()  # another refresh: the closed one is gone now
    await expect(rows).to_have_count(2)
    assert ops.unexpected_errors() == []
