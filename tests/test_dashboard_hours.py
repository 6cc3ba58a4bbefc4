"""The site page's Opening hours form over HTTP, and `site hours` on the command line: an admin saves hours the widget's config then reports,
bad input gets a clear sentence and keeps what was typed, each change is audited, agents get 403."""

from __future__ import annotations

import html
import json
from datetime import datetime
from zoneinfo import ZoneInfo

from server.insights import site_zone
from tests.dashboard import Operator
from tests.harness import Parley
from tests.test_dashboard_sites import admin, agent, post_form  # noqa: F401 - fixtures
from tests.test_operator_cli import cli

HOURS = {"available_when": "hours", "time_zone": "America/New_York", "mon": "09:00-12:00, 13:00-17:00",
         "tue": "09:00-17:00", "wed": "", "thu": "", "fri": "09:00-17:00", "sat": "", "sun": "",
         "closed_dates": "2026-12-25\n2026-12-31..2027-01-01", "away_message": ""}
SUNDAY_NEW_YORK = datetime(2026, 12, 6, 12, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()


async def test_an_admin_sets_hours_and_the_widget_config_follows(parley: Parley, admin: Operator):
    path = f"/dashboard/sites/{parley.site_key}/hours"
    saved = await post_form(admin, path, **HOURS)
    assert saved.status_code == 302 and saved.headers["Location"].endswith("?saved=hours#hours")

    parley.services.hours.clock = lambda: SUNDAY_NEW_YORK
    config = (await parley.get("config", site_key=parley.site_key)).json()["config"]
    assert config["open_now"] is False and config["next_opening"] == "2026-12-07T09:00:00-05:00"

    page = html.unescape((await admin.get(f"/dashboard/sites/{parley.site_key}", saved="hours")).text)
    assert "Opening hours saved" in page
    assert 'value="09:00-12:00, 13:00-17:00"' in page and "2026-12-31..2027-01-01" in page
    assert "Away now (outside opening hours)" in page and "Monday 2026-12-07 09:00" in page
    # One time zone per site: the Numbers page counts its busiest hours in it too.
    assert site_zone(await parley.services.sites.get(parley.site_key)).key == "America/New_York"
    entries = await parley.services.audit.entries()
    assert entries[0].action == "site.hours" and entries[0].detail["time_zone"] == "America/New_York"


async def test_bad_hours_get_a_clear_error_and_keep_what_was_typed(parley: Parley, admin: Operator):
    path = f"/dashboard/sites/{parley.site_key}/hours"
    for fields, sentence in (({"time_zone": "Mars/Olympus_Mons"}, "'Mars/Olympus_Mons' is not a time zone"),
                             ({"mon": "17:00-09:00"}, "Monday: 17:00-09:00 ends before it starts"),
                             ({"closed_dates": "2026-13-01"}, "'2026-13-01' is not a date such as 2026-12-25")):
        refused = await post_form(admin, path, **{**HOURS, **fields})
        assert refused.status_code == 400
        page = html.unescape(refused.text)
        assert sentence in page
        assert f'value="{list(fields.values())[0]}"' in page or list(fields.values())[0] in page
    site = await parley.services.sites.get(parley.site_key)
    assert "opening_hours" not in site.settings  # nothing half-saved


async def test_agents_get_403_on_opening_hours(parley: Parley, agent: Operator):
    path = f"/dashboard/sites/{parley.site_key}/hours"
    assert (await post_form(agent, path, **HOURS)).status_code == 403
    assert (await agent.get(path)).status_code == 403
    assert "opening_hours" not in (await parley.services.sites.get(parley.site_key)).settings


async def test_the_command_line_shows_and_changes_the_same_hours(parley: Parley):
    data_dir = parley.services.config.data_dir
    code, out, err = await cli(data_dir, "site", "hours", "--site", parley.site_key)
    assert code == 0, err
    # Always available (the default): no day reads "closed" just above "Open now".
    assert "weekly hours:   not in use" in out and "Monday:         -" in out
    assert not any(line.endswith(" closed") for line in out.splitlines())
    code, out, err = await cli(data_dir, "site", "hours", "--site", parley.site_key, "--available-when", "hours",
                               "--time-zone", "Europe/Paris", "--mon", "09:00-17:00", "--closed", "2026-12-25")
    assert code == 0, err
    assert "Monday:         09:00-17:00" in out and "closed dates:   2026-12-25" in out
    code, out, _ = await cli(data_dir, "site", "hours", "--site", parley.site_key, "--json")
    shown = json.loads(out)
    assert shown["weekly"] == {"mon": ["09:00-17:00"]} and shown["available_when"] == "hours"
    assert "open_now" in shown and "next_opening" in shown
    code, _, err = await cli(data_dir, "site", "hours", "--site", parley.site_key, "--tue", "18:00-08:00")
    assert code == 2 and "Tuesday: 18:00-08:00 ends before it starts" in err
    code, out, _ = await cli(data_dir, "site", "hours", "--help")
    assert code == 0 and "--available-when" in out and "IANA time zone" in out
