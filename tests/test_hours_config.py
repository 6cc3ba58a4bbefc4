"""Opening hours over HTTP: what GET /api/v1/chat/config tells the widget at a fixed time, who counts
as an operator online (across processes: from the store), and a handoff while away asking for an
email while the AI keeps answering."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from server.audit import CLI
from server.store.models import Site
from tests.dashboard import sign_in
from tests.harness import Parley, session
from tests.waiting import eventually

MONDAY_8_PARIS = datetime(2026, 11, 30, 8, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
MONDAY_10_PARIS = datetime(2026, 11, 30, 10, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
SATURDAY_NOON_PARIS = datetime(2026, 12, 5, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
WEEKDAYS = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}


async def with_hours(parley: Parley, available_when: str = "hours", **extra: str) -> Site:
    return await parley.services.hours.save(
        parley.site, {"time_zone": "Europe/Paris", "available_when": available_when, **WEEKDAYS, **extra},
        CLI)


async def config(parley: Parley) -> dict:
    response = await parley.get("config", site_key=parley.site_key)
    assert response.status_code == 200
    return response.json()["config"]


async def test_a_site_without_hours_is_always_open(parley: Parley):
    body = await config(parley)
    assert body["open_now"] is True and body["operators_online"] is False
    assert body["next_opening"] is None and body["available_when"] == "always"
    assert body["title"] == "Chat with us"  # the existing fields stay as they were


async def test_outside_hours_the_config_says_away_and_when_it_opens(parley: Parley):
    await with_hours(parley, away_message="Gone fishing.")
    parley.services.hours.clock = lambda: SATURDAY_NOON_PARIS
    away = await config(parley)
    assert away["open_now"] is False
    assert away["next_opening"] == "2026-12-07T09:00:00+01:00"  # Monday, with the site's offset
    assert away["time_zone"] == "Europe/Paris" and away["away_message"] == "Gone fishing."

    parley.services.hours.clock = lambda: MONDAY_10_PARIS
    inside = await config(parley)
    assert inside["open_now"] is True and inside["next_opening"] is None


async def test_operators_online_come_from_the_store_and_only_for_their_sites(parley: Parley):
    await with_hours(parley, available_when="operators")
    elsewhere = await parley.services.sites.create("Elsewhere")
    assert (await config(parley))["open_now"] is False
    # An agent of another site being signed in does not open this one.
    other_agent = await sign_in(parley, "other@example.com", role="agent", sites=(elsewhere.id,))
    assert (await config(parley))["operators_online"] is False
    agent = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))
    body = await config(parley)
    assert body["operators_online"] is True and body["open_now"] is True
    assert body["next_opening"] is None  # nobody can say when an operator comes back
    await agent.client.post("/dashboard/logout", data={"_xsrf": agent.xsrf})
    assert (await config(parley))["operators_online"] is False
    for who in (agent, other_agent):
        await who.client.aclose()


async def test_both_needs_hours_and_an_operator(parley: Parley):
    await with_hours(parley, available_when="both")
    admin = await sign_in(parley, "admin@example.com")
    parley.services.hours.clock = lambda: MONDAY_8_PARIS
    early = await config(parley)
    assert (early["open_now"], early["operators_online"]) == (False, True)
    assert early["next_opening"] == "2026-11-30T09:00:00+01:00"
    parley.services.hours.clock = lambda: MONDAY_10_PARIS
    assert (await config(parley))["open_now"] is True
    await admin.client.aclose()


async def test_a_handoff_while_away_asks_for_an_email_and_the_ai_keeps_answering(parley: Parley):
    await with_hours(parley)
    parley.services.hours.clock = lambda: SATURDAY_NOON_PARIS
    visitor = session("away")
    events = await parley.ask(visitor, "Can I talk to a human please?")
    text = "".join(e["content"] for e in events if e["type"] == "chunk")
    assert "Leave your email" in text and "write back" in text
    assert events[-1]["meta"]["handoff"] is True
    conversation = await parley.services.store.get_conversation(parley.site.id, visitor)
    assert conversation is not None and conversation.handoff and conversation.mode == "ai"
    answer = await parley.ask(visitor, "Do you ship to Canada?")
    assert "Canada" in "".join(e["content"] for e in answer if e["type"] == "chunk")
    assert (await parley.post("email", parley.ids(visitor, email="jane@example.com"))).status_code == 200

    parley.services.hours.clock = lambda: MONDAY_10_PARIS
    inside = await parley.ask(session("inside"), "Can I talk to a human please?")
    assert "they will reply here" in "".join(e["content"] for e in inside if e["type"] == "chunk")


async def test_an_open_dashboard_feed_keeps_its_operator_online(parley: Parley):
    await with_hours(parley, available_when="operators")
    hours = parley.services.hours
    hours.presence_seconds = 0.3  # the window shrunk: the sign-in itself soon stops counting
    agent = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))

    async def online() -> bool:
        return (await config(parley))["operators_online"]

    await eventually(lambda: _not(online()), what="the sign-in to age out")
    async with agent.client.stream("GET", "/dashboard/events") as feed:
        assert feed.status_code == 200
        await eventually(online, what="the open feed to count as online")
    await eventually(lambda: _not(online()), what="the closed feed to age out")
    await agent.client.aclose()


async def _not(value) -> bool:
    return not await value
