"""axe-core (Deque's accessibility rules engine, as bundled by the axe-playwright-python package)
finds nothing wrong on the pages visitors and operators use: the demo page with the widget open after
an answer, and the dashboard's inbox, a conversation with the canned replies open, and the admin pages."""

from __future__ import annotations

from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page

from server.store.models import Site
from tests.dashboard import PASSWORD, add_operator
from tests.e2e.browser import visit
from tests.e2e.test_dashboard_markdown import signed_in
from tests.harness import Parley


async def violations(page: Page) -> list[str]:
    """Each rule broken, with the elements that break it: what a failing test should print."""
    results = await Axe().run(page)
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes'][:5]]}"
            for v in results.response["violations"]]


async def test_the_widget_and_the_dashboard_pass_axe(parley: Parley, demo: Site, browser: Browser):
    visitor = await visit(browser, f"{parley.base_url}/demo")
    await visitor.open_chat()
    await visitor.ask("Do you ship to Canada?")
    await visitor.widget(".msg.bot .src").last.wait_for(timeout=10_000)
    assert await violations(visitor.page) == []

    await add_operator(parley, "admin@example.com")
    admin = await signed_in(browser, f"{parley.base_url}/dashboard/", "admin@example.com", PASSWORD)
    page = admin.page
    await page.locator(".conversation-list a").first.wait_for()
    assert await violations(page) == [], "the inbox"
    await page.locator(".conversation-list a").first.click()
    await page.locator("#messages .msg").first.wait_for()
    await page.locator("#reply").press("/")
    await page.locator("#canned").wait_for()
    assert await violations(page) == [], "a conversation, canned replies open"
    for path in ("numbers", "operators", "account", "visitors", "audit", "sites",
                 f"sites/{demo.site_key}", f"sites/{demo.site_key}/knowledge", f"sites/{demo.site_key}/rules",
                 f"sites/{demo.site_key}/contacts", f"sites/{demo.site_key}/ai", f"sites/{demo.site_key}/hours"):
        response = await page.goto(f"{parley.base_url}/dashboard/{path}")
        assert response is not None and response.ok, path
        assert await violations(page) == [], path
    assert visitor.unexpected_errors() == [] and admin.unexpected_errors() == []
