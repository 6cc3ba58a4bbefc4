"""In a real Chromium: a sitemap fetch's progress and its errors appear on the knowledge page while
it runs, without a reload; the numbers page draws its charts (server-side SVG) beside their tables."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from server.store.models import Site
from tests.dashboard import PASSWORD, add_operator
from tests.e2e.browser import visit
from tests.harness import Parley, session
from tests.test_dashboard_knowledge_live import SlowWebsite, slow_website  # noqa: F401 - a fixture


async def test_fetch_progress_shows_live_and_the_numbers_are_drawn(parley: Parley, demo: Site, browser: Browser,
                                                                   slow_website: SlowWebsite):
    parley.services.site_knowledge.ingest.allow_private = True  # the test website is on loopback
    await add_operator(parley, "admin@example.com")
    admin = await visit(browser, f"{parley.base_url}/dashboard/sites/{demo.site_key}/knowledge")
    await admin.page.get_by_label("Email").fill("admin@example.com")
    await admin.page.get_by_label("Password").fill(PASSWORD)
    await admin.page.get_by_role("button", name="Sign in").click()
    await expect(admin.page.get_by_role("heading", level=1)).to_have_text("Knowledge")

    sitemap = f"http://127.0.0.1:{slow_website.port}/sitemap.xml"
    await admin.page.get_by_label("URL").fill(sitemap)
    await admin.page.get_by_role("button", name="Fetch").click()
    jobs = admin.page.locator("#jobs")
    await expect(jobs).to_contain_text("1 of 3 page(s)")  # the slow page holds the fetch here
    await expect(jobs).to_contain_text("fetching")
    slow_website.gate.set()
    await expect(jobs).to_contain_text("done 3 of 3 page(s) · added 2 page(s)")  # no reload
    await expect(jobs.locator(".job-errors")).to_contain_text("/missing answered HTTP 404.")
    await admin.page.get_by_role("link", name="Show the documents now").click()
    await expect(admin.page.locator("table.documents")).to_contain_text("Fine page")

    await parley.ask(session("numbers1"), "How long does shipping take?")
    await parley.ask(session("numbers1"), "And returns?")
    await parley.ask(session("numbers2"), "Can I talk to a human?")
    await admin.page.get_by_role("link", name="Numbers").click()
    await expect(admin.page.get_by_role("heading", level=1)).to_have_text(f"Numbers: {parley.site.name}")
    await expect(admin.page.locator("#n-conversations")).to_have_text("2")
    await expect(admin.page.locator("#n-handoffs")).to_have_text("1")
    chart = admin.page.get_by_role("img", name="Visitor messages by hour of day")
    await expect(chart).to_be_visible()
    box = await chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    await expect(admin.page.locator("table.hours tbody tr")).to_have_count(24)
    await chart.scroll_into_view_if_needed()
    await admin.screenshot("dashboard-numbers")
    assert admin.unexpected_errors() == []
