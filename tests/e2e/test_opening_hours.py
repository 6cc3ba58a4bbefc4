"""Opening hours in a real Chromium, with the server's clock and the browser's clock both fixed:
away, the widget says so and when it is back, the AI keeps answering, and asking for a person
collects an email; within hours, asking for a person says one is coming."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from playwright.async_api import Browser, expect

from server.audit import CLI
from server.store.models import Site
from tests.dashboard import PASSWORD, add_operator
from tests.e2e.browser import Visit, visit
from tests.harness import Parley
from tests.waiting import until_held

PARIS = ZoneInfo("Europe/Paris")
SATURDAY_NOON = datetime(2026, 12, 5, 12, 0, tzinfo=PARIS)
MONDAY_TEN = datetime(2026, 12, 7, 10, 0, tzinfo=PARIS)


async def shop_at(parley: Parley, browser: Browser, at: datetime) -> Visit:
    """The demo page, in a browser whose clock (and the server's) reads `at`, in Paris."""
    parley.services.hours.clock = at.timestamp
    shop = await visit(browser, "about:blank", timezone_id="Europe/Paris", locale="en-GB")
    await shop.page.clock.set_fixed_time(at)
    await shop.page.goto(f"{parley.base_url}/demo")
    await shop.open_chat()
    return shop


async def weekday_hours(parley: Parley, demo: Site) -> None:
    await parley.services.hours.save(demo, {
        "available_when": "hours", "time_zone": "Europe/Paris",
        **{day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}}, CLI)


async def test_away_the_widget_says_so_keeps_answering_and_collects_an_email(
        parley: Parley, demo: Site, browser: Browser):
    await weekday_hours(parley, demo)
    shop = await shop_at(parley, browser, SATURDAY_NOON)
    away = shop.widget(".away")
    await expect(away).to_be_visible()
    await expect(away).to_have_text("We're away right now — back Monday 9:00. Our assistant can still help.")

    await shop.ask("Do you ship to Canada?")  # the AI keeps answering
    await expect(shop.widget(".msg.bot .src").last).to_be_visible(timeout=10_000)

    await shop.ask("I want to talk to a person")
    card = shop.widget(".card.email")
    await expect(card).to_be_visible(timeout=10_000)
    await expect(card).to_contain_text("Leave your email and we'll write back")
    await expect(shop.widget(".msg.bot").last).to_contain_text("Nobody from the team is available right now")
    await shop.screenshot("away")
    await card.locator("input").fill("jane@example.com")
    await card.locator("button").click()
    await expect(card).to_have_text("Thanks! We'll write back to jane@example.com.")
    conversation = await parley.services.store.get_conversation(demo.id, await shop.session_id())
    assert conversation is not None and conversation.email == "jane@example.com" and conversation.handoff
    # Someone takes the chat over after all: the widget no longer says the team is away.
    await until_held(parley.services, demo.id, await shop.session_id(), 2)  # history and proactive
    await parley.services.operators.set_mode(demo, await shop.session_id(), "operator")
    await expect(away).to_be_hidden(timeout=5_000)
    assert shop.unexpected_errors() == []


async def test_within_hours_asking_for_a_person_says_one_is_coming(parley: Parley, demo: Site,
                                                                 browser: Browser):
    await weekday_hours(parley, demo)
    shop = await shop_at(parley, browser, MONDAY_TEN)
    await shop.ask("I want to talk to a person")
    card = shop.widget(".card.email")
    await expect(card).to_be_visible(timeout=10_000)
    await expect(card).to_contain_text("A person from the team is coming and will reply here.")
    await expect(shop.widget(".msg.bot").last).to_contain_text("they will reply here")
    await expect(shop.widget(".away")).to_be_hidden()
    assert shop.unexpected_errors() == []


async def test_a_widget_left_open_sees_the_hours_end_at_the_handoff(parley: Parley, demo: Site,
                                                                   browser: Browser):
    """Loaded within hours, asked after they ended: the widget asks the server again."""
    await weekday_hours(parley, demo)
    shop = await shop_at(parley, browser, datetime(2026, 12, 4, 16, 59, tzinfo=PARIS))  # Friday
    await expect(shop.widget(".away")).to_be_hidden()
    parley.services.hours.clock = datetime(2026, 12, 4, 17, 30, tzinfo=PARIS).timestamp
    await shop.page.clock.set_fixed_time(datetime(2026, 12, 4, 17, 30, tzinfo=PARIS))
    await shop.ask("Can I speak to a person?")
    await expect(shop.widget(".card.email")).to_contain_text("we'll write back", timeout=10_000)
    await expect(shop.widget(".away")).to_contain_text("back Monday 9:00")
    assert shop.unexpected_errors() == []


async def test_an_admin_sets_the_hours_on_the_site_page_and_the_widget_follows(
        parley: Parley, demo: Site, browser: Browser):
    await add_operator(parley, "admin@example.com")
    admin = await visit(browser, f"{parley.base_url}/dashboard/sites/{demo.site_key}")
    await admin.page.get_by_label("Email").fill("admin@example.com")
    await admin.page.get_by_label("Password").fill(PASSWORD)
    await admin.page.get_by_role("button", name="Sign in").click()
    hours = admin.page.locator("#hours")
    await hours.get_by_label("A person can answer").select_option("hours")
    await hours.get_by_label("Time zone").fill("Europe/Paris")
    await hours.get_by_label("Saturday").fill("10:00-9:00")
    await hours.get_by_role("button", name="Save hours").click()
    await expect(admin.page.get_by_role("alert")).to_contain_text("Saturday: 10:00-9:00 ends before it starts")
    await admin.page.locator("#hours").get_by_label("Saturday").fill("10:00-13:00")
    await admin.page.locator("#hours").get_by_role("button", name="Save hours").click()
    await expect(admin.page.get_by_role("status").first).to_contain_text("Opening hours saved")
    await admin.screenshot("opening-hours")

    shop = await shop_at(parley, browser, SATURDAY_NOON)  # Saturday 12:00: open until 13:00
    await expect(shop.widget(".away")).to_be_hidden()
    parley.services.hours.clock = datetime(2026, 12, 5, 13, 30, tzinfo=PARIS).timestamp
    await shop.page.clock.set_fixed_time(datetime(2026, 12, 5, 13, 30, tzinfo=PARIS))
    await shop.page.reload()  # the widget reopens as it was left
    await expect(shop.widget(".away")).to_contain_text("back Saturday")  # a week on
    await expect(shop.widget(".away")).to_be_visible()
    assert admin.unexpected_errors(allowed=r"400 \(Bad Request\)") == [] and shop.unexpected_errors() == []
