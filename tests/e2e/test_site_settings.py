"""An admin changes the widget's colour and greeting in the dashboard, in a real Chromium, and the
demo page's widget shows them after a reload."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from server.store.models import Site
from tests.dashboard import PASSWORD, add_operator
from tests.e2e.browser import visit
from tests.harness import Parley


async def test_the_widget_shows_a_new_colour_and_greeting_after_a_reload(parley: Parley, demo: Site,
                                                                          browser: Browser):
    await add_operator(parley, "admin@example.com")
    page_url = f"{parley.base_url}/demo"
    shop = await visit(browser, page_url)
    await shop.open_chat()
    await expect(shop.widget(".launcher")).not_to_have_css("background-color", "rgb(170, 51, 0)")

    admin = await visit(browser, f"{parley.base_url}/dashboard/sites/{demo.site_key}")
    await admin.page.get_by_label("Email").fill("admin@example.com")
    await admin.page.get_by_label("Password").fill(PASSWORD)
    await admin.page.get_by_role("button", name="Sign in").click()
    await expect(admin.page.get_by_role("heading", level=1)).to_have_text(demo.name)
    await admin.page.locator("#color").fill("#aa3300")
    await admin.page.get_by_label("Greeting").fill("Bom dia! How can we help with your order?")
    await admin.page.get_by_role("button", name="Save", exact=True).click()
    await expect(admin.page.get_by_role("status")).to_contain_text("Saved")
    await admin.screenshot("site-settings")

    await shop.page.reload()
    await expect(shop.widget(".launcher")).to_have_css("background-color", "rgb(170, 51, 0)")
    if not await shop.widget(".panel").is_visible():  # the widget may reopen as it was left
        await shop.open_chat()
    await expect(shop.widget(".panel")).to_contain_text("Bom dia! How can we help with your order?")
    assert shop.unexpected_errors() == [] and admin.unexpected_errors() == []
