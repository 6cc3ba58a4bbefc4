"""The numbers page over HTTP, on a fixture with known times: the figures a user reads, the date
range, an empty range, the site's time zone, the charts with their tables, and who may see what."""

from __future__ import annotations

import re

import pytest

from server.charts import nice_top
from server.insights import duration_text
from tests.dashboard import Operator, sign_in
from tests.harness import Parley
from tests.store_clock import StoreClock, store_clock  # noqa: F401 - a fixture
from tests.test_dashboard_sites import admin, agent  # noqa: F401 - fixtures
from tests.test_store_conformance import activity_fixture

SHOP = "sk_shop" + "_" * 26  # the fixture's site
MARCH = {"site": SHOP, "from": "2026-03-01", "to": "2026-03-04"}


def figure(page: str, name: str) -> str:
    found = re.search(rf'<dd id="n-{name}">([^<]*)</dd>', page)
    assert found, f"no figure {name}"
    return found.group(1)


def table(page: str, css_class: str) -> dict[str, int]:
    body = page.split(f'<table class="{css_class}">', 1)[1].split("</table>", 1)[0]
    return {label: int(value) for label, value in re.findall(r'<th scope="row">([^<]+)</th><td>(\d+)</td>', body)}


@pytest.fixture
async def shop(parley: Parley, store_clock: StoreClock) -> None:
    await activity_fixture(parley.services.store, store_clock)


async def test_the_figures_a_user_reads(parley: Parley, admin: Operator, shop):
    page = await admin.get("/dashboard/numbers", **MARCH)
    assert page.status_code == 200
    text = page.text
    assert [figure(text, n) for n in ("conversations", "messages", "ai-share", "handoffs", "wait", "rating")] == [
        "4", "5", "25 %", "3", "3 min 15 s", "4.3 / 5"]
    assert "1 of 4, no handoff" in text and "2 answered by an operator" in text and "3 ratings" in text
    assert "in UTC (the site has no time zone set)" in text
    hours = table(text, "hours")
    assert len(hours) == 24 and hours["09:00"] == 2 and hours["14:00"] == 3 and sum(hours.values()) == 5
    assert "Busiest hours (UTC): 14:00 to 15:00" in text
    assert table(text, "ratings") == {"1": 0, "2": 0, "3": 1, "4": 0, "5": 2}
    # The charts are drawn here, labelled for assistive technology, one bar per row of their table.
    svg = text.split('<svg class="chart"', 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in svg and '<title id="hours-chart-title">' in svg and "<desc" in svg
    assert svg.count('<rect class="bar"') == 24 and "<script" not in text.lower().split("<main", 1)[1]
    assert "<title>14: 3</title>" in svg


async def test_the_date_range_and_an_empty_range(parley: Parley, admin: Operator, shop):
    one_day = (await admin.get("/dashboard/numbers", site=SHOP, **{"from": "2026-03-03", "to": "2026-03-03"})).text
    assert [figure(one_day, n) for n in ("conversations", "messages", "handoffs", "wait", "rating")] == [
        "2", "3", "2", "5 min", "5.0 / 5"]
    assert "2026-03-03 to 2026-03-03 (1 day)" in one_day
    empty = (await admin.get("/dashboard/numbers", site=SHOP, **{"from": "2026-04-01", "to": "2026-04-30"})).text
    assert "No visitor wrote in this range." in empty
    assert [figure(empty, n) for n in ("conversations", "messages", "ai-share", "wait", "rating")] == [
        "0", "0", "–", "–", "–"]
    assert sum(table(empty, "hours").values()) == 0
    for dates, message in ((("2026-03-05", "2026-03-01"), "starts after it ends"),
                           (("2025-01-01", "2026-03-01"), "at most 366 days"),
                           (("March", "2026-03-01"), "YYYY-MM-DD")):
        bad = await admin.get("/dashboard/numbers", site=SHOP, **{"from": dates[0], "to": dates[1]})
        assert bad.status_code == 400 and message in bad.text
    default = (await admin.get("/dashboard/numbers", site=SHOP)).text  # the last 30 days, to today
    assert "(30 days)" in default


async def test_hours_and_days_follow_the_site_time_zone(parley: Parley, admin: Operator, shop):
    site = await parley.services.store.get_site_by_key(SHOP)
    await parley.services.sites.update_settings(site.id, {"timezone": "America/New_York"})  # UTC-5 in March
    text = (await admin.get("/dashboard/numbers", **MARCH)).text
    assert "dates and hours in America/New_York." in text
    hours = table(text, "hours")
    assert hours["04:00"] == 2 and hours["09:00"] == 3
    assert "Busiest hours (America/New_York): 09:00 to 10:00" in text


async def test_agents_see_their_own_sites_only(parley: Parley, agent: Operator, shop):
    own = await agent.get("/dashboard/numbers")
    assert own.status_code == 200 and f"Numbers: {parley.site.name}" in own.text
    assert SHOP not in own.text  # not even offered
    assert (await agent.get("/dashboard/numbers", **MARCH)).status_code == 403
    nobody = await sign_in(parley, "new@example.com", role="agent")
    try:
        page = await nobody.get("/dashboard/numbers")
        assert page.status_code == 200 and "not assigned to any site" in page.text
    finally:
        await nobody.client.aclose()
    signed_out = await parley.client.get("/dashboard/numbers", follow_redirects=False)
    assert signed_out.status_code == 302 and "/dashboard/login" in signed_out.headers["Location"]


def test_chart_axis_and_durations_read_well():
    assert [nice_top(v) for v in (0, 3, 7, 11, 101)] == [2, 4, 10, 20, 200]
    assert [duration_text(s) for s in (None, 42, 195, 300, 7500)] == ["–", "42 s", "3 min 15 s", "5 min",
                                                                       "2 h 5 min"]
