"""In a real Chromium: the dashboard draws the AI's and operators' Markdown with the widget's own
renderer (/widget/markdown.js) — in the inbox, while the answer streams and once it is stored, and in
the knowledge page's Try the assistant — while a visitor's words stay exactly as typed, and markup in
either is text, never an element."""

from __future__ import annotations

import asyncio

import httpx
from playwright.async_api import Browser, Locator, expect

from server.demo import ensure_demo_site
from server.store.models import Site
from tests.dashboard import add_operator
from tests.dashboard import PASSWORD as HARNESS_PASSWORD
from tests.e2e.browser import Visit, visit
from tests.e2e.test_dashboard import PASSWORD, Server, server  # noqa: F401 - a fixture
from tests.harness import Parley
from tests.providers import GatedProvider

XSS = "<img src=x onerror=\"document.title='pwned'\">"
MARKDOWN = "We ship **fast**:\n- to Canada\n- see [the policy](https://shop.example/shipping)\n" + XSS
LINK_REL = "noopener noreferrer nofollow"


async def expect_rendered(text: Locator) -> None:
    await expect(text.locator("strong")).to_have_text("fast")
    await expect(text.locator("li")).to_have_count(2)
    link = text.locator("li a")
    await expect(link).to_have_text("the policy")
    await expect(link).to_have_attribute("href", "https://shop.example/shipping")
    await expect(link).to_have_attribute("rel", LINK_REL)
    await expect(text).to_contain_text(XSS)  # the markup is words on the screen
    assert await text.locator("img").count() == 0


async def signed_in(browser: Browser, url: str, email: str, password: str) -> Visit:
    page = await visit(browser, url, viewport={"width": 1280, "height": 800})
    await page.page.get_by_label("Email").fill(email)
    await page.page.get_by_label("Password").fill(password)
    await page.page.get_by_role("button", name="Sign in").click()
    return page


async def test_ai_and_operator_markdown_is_drawn_and_visitor_text_is_not(server: Server, browser: Browser):
    services = server.services
    assert services is not None
    site, _ = await ensure_demo_site(services.sites, services.store)
    await services.accounts.create("ana@example.com", "Ana", "admin", PASSWORD)
    # The answer streams in pieces that split the bold and the link mid-way.
    pieces = ["We ship **fa", "st**:\n- to Canada\n- see [the pol", "icy](https://shop.example/shipping)\n" + XSS]
    assert "".join(pieces) == MARKDOWN
    provider = GatedProvider(pieces)
    services.ai.default_provider = provider
    ops = await signed_in(browser, f"{server.base_url}/dashboard/", "ana@example.com", PASSWORD)
    await expect(ops.page.locator("#live-state")).to_have_text("Live", timeout=10_000)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        ask = asyncio.create_task(client.post("/api/v1/chat/stream", json={
            "site_key": site.site_key, "session_id": "sess_e2emarkdown0000001", "message": MARKDOWN}))
        await asyncio.wait_for(provider.started.wait(), 10)
        await ops.page.locator(".conversation-list a").first.click()
        visitor = ops.page.locator(".msg.visitor .text")
        await expect(visitor).to_have_text(MARKDOWN)  # as typed: asterisks, dashes, brackets, the tag
        assert await ops.page.locator(".msg.visitor strong, .msg.visitor li, .msg.visitor a").count() == 0

        streaming = ops.page.locator(".msg.streaming .text")
        provider.release()
        await expect(streaming).to_have_text("We ship **fa", timeout=5_000)  # not bold until it closes
        provider.release()
        await expect(streaming.locator("strong")).to_have_text("fast", timeout=5_000)
        await expect(streaming.locator("li")).to_have_count(2)
        provider.release()
        await expect(ops.page.locator(".msg.streaming")).to_have_count(0, timeout=5_000)
        await expect_rendered(ops.page.locator(".msg.ai .text"))
        await ask

    await services.operators.say(site, "sess_e2emarkdown0000001", MARKDOWN, operator_name="Ana")
    await expect_rendered(ops.page.locator(".msg.operator .text"))
    # The inbox's one-line preview is plain text, without Markdown's marks.
    await expect(ops.page.locator(".conversation-list a .last").first).to_have_text(
        "operator: We ship fast: to Canada see the policy " + XSS, timeout=5_000)
    await ops.screenshot("dashboard-markdown")
    assert "pwned" not in await ops.page.title()
    assert await ops.page.locator("#messages img").count() == 0
    assert ops.unexpected_errors() == []


async def test_try_the_assistant_draws_the_answer_as_the_widget_would(parley: Parley, demo: Site,
                                                                      browser: Browser):
    provider = GatedProvider([MARKDOWN])
    provider.release()
    parley.services.ai.default_provider = provider
    await add_operator(parley, "admin@example.com")
    admin = await signed_in(browser, f"{parley.base_url}/dashboard/sites/{demo.site_key}/knowledge",
                            "admin@example.com", HARNESS_PASSWORD)
    await admin.page.get_by_label("Ask as a visitor would").fill("Do you ship to Canada?")
    await admin.page.get_by_role("button", name="Try").click()
    await expect_rendered(admin.page.locator(".tried-answer"))
    assert "pwned" not in await admin.page.title()
    assert admin.unexpected_errors() == []
