"""Opening hours with a fixed clock: wall-clock hours in the site's zone across a DST change, closed
dates, a night across midnight, the next opening a week away, and the admin's clear errors."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from server.errors import InvalidRequest
from server.opening_hours import OpeningHours, parse_ranges

PARIS = ZoneInfo("Europe/Paris")
WEEKDAYS_9_TO_5 = {day: "09:00-12:00, 13:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}


def hours(**values) -> OpeningHours:
    return OpeningHours.parse({"time_zone": "Europe/Paris", "available_when": "hours",
                               "weekly": WEEKDAYS_9_TO_5, **values})


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def test_within_hours_is_wall_clock_time_in_the_site_zone():
    shop = hours()
    assert shop.within_hours(paris(2026, 11, 30, 9, 0))  # a Monday
    assert not shop.within_hours(paris(2026, 11, 30, 8, 59))
    assert not shop.within_hours(paris(2026, 11, 30, 12, 30))  # lunch
    assert not shop.within_hours(paris(2026, 11, 30, 17, 0))  # the end is exclusive
    # 08:30 UTC is 09:30 in Paris in winter: the visitor's or server's zone does not matter.
    assert shop.within_hours(datetime.fromisoformat("2026-11-30T08:30:00+00:00"))
    assert not shop.within_hours(paris(2026, 12, 5, 10, 0))  # Saturday


def test_nine_stays_nine_across_the_daylight_saving_change():
    shop = hours()
    # Clocks go forward on Sunday 2026-03-29 in Paris: 09:00 on Monday is 07:00 UTC, not 08:00.
    before = datetime.fromisoformat("2026-03-27T08:00:00+00:00")  # Friday 09:00 CET
    after = datetime.fromisoformat("2026-03-30T07:00:00+00:00")  # Monday 09:00 CEST
    assert shop.within_hours(before) and shop.within_hours(after)
    assert not shop.within_hours(datetime.fromisoformat("2026-03-30T06:59:00+00:00"))
    # Closed over the weekend of the change: the next opening is Monday 09:00 at the summer offset.
    opening = shop.next_opening(datetime.fromisoformat("2026-03-28T12:00:00+00:00"))
    assert opening is not None and opening.isoformat() == "2026-03-30T09:00:00+02:00"


def test_a_start_in_the_spring_gap_opens_when_the_clocks_jump():
    night = OpeningHours.parse({"time_zone": "Europe/Paris", "available_when": "hours",
                                "weekly": {"sun": "02:30-05:00"}})
    opening = night.next_opening(paris(2026, 3, 29, 0, 0))  # 02:00 -> 03:00 that night
    assert opening is not None and opening.isoformat() == "2026-03-29T03:00:00+02:00"


def test_a_closed_date_closes_the_day_and_the_next_opening_skips_it():
    shop = hours(closed_dates="2026-12-24..2026-12-25\n2026-12-28")
    assert not shop.within_hours(paris(2026, 12, 24, 10, 0))
    assert shop.within_hours(paris(2026, 12, 23, 10, 0))
    opening = shop.next_opening(paris(2026, 12, 23, 18, 0))  # Wednesday evening
    # Thursday 24 and Friday 25 closed, the weekend, Monday 28 closed: Tuesday 29.
    assert opening == paris(2026, 12, 29, 9, 0)


def test_next_opening_across_a_week_and_between_ranges():
    shop = hours()
    assert shop.next_opening(paris(2026, 11, 30, 10, 0)) is None  # open now
    assert shop.next_opening(paris(2026, 11, 30, 12, 15)) == paris(2026, 11, 30, 13, 0)
    assert shop.next_opening(paris(2026, 12, 4, 17, 30)) == paris(2026, 12, 7, 9, 0)  # Fri -> Mon
    weekly = OpeningHours.parse({"time_zone": "Europe/Paris", "available_when": "hours",
                                 "weekly": {"wed": "10:00-11:00"}})
    # Just after Wednesday's hour: a whole week ahead.
    assert weekly.next_opening(paris(2026, 12, 2, 11, 0)) == paris(2026, 12, 9, 10, 0)
    assert OpeningHours().next_opening(paris(2026, 12, 2, 11, 0)) is None  # no hours: no opening


def test_a_night_across_midnight_is_an_evening_and_a_morning():
    bar = OpeningHours.parse({"time_zone": "America/New_York", "available_when": "hours",
                              "weekly": {"fri": "20:00-24:00", "sat": "00:00-02:00"}})
    new_york = ZoneInfo("America/New_York")
    assert bar.within_hours(datetime(2026, 12, 4, 23, 59, tzinfo=new_york))
    assert bar.within_hours(datetime(2026, 12, 5, 0, 0, tzinfo=new_york))
    assert bar.within_hours(datetime(2026, 12, 5, 1, 30, tzinfo=new_york))
    assert not bar.within_hours(datetime(2026, 12, 5, 2, 0, tzinfo=new_york))
    assert bar.next_opening(datetime(2026, 12, 5, 3, 0, tzinfo=new_york)) == \
        datetime(2026, 12, 11, 20, 0, tzinfo=new_york)


def test_ranges_are_read_as_people_write_them():
    assert [str(r) for r in parse_ranges("9:00 - 12:00; 13:00–17:30")] == ["09:00-12:00", "13:00-17:30"]
    assert [str(r) for r in parse_ranges("00:00-24:00")] == ["00:00-24:00"]
    assert parse_ranges("  ") == ()


def test_the_stored_form_reads_back_the_same():
    shop = hours(closed_dates=["2026-12-25", "2026-12-24", "2026-12-25"], away_message="Back soon!")
    setting = shop.to_setting()
    assert setting["weekly"]["mon"] == ["09:00-12:00", "13:00-17:00"] and "sat" not in setting["weekly"]
    assert setting["closed_dates"] == ["2026-12-24", "2026-12-25"]
    assert "time_zone" not in setting  # kept as the site's own `timezone`, which Numbers uses too
    assert OpeningHours.from_setting({**setting, "time_zone": "Europe/Paris"}) == shop
    # Something unreadable stored by hand is no hours at all, not a broken widget.
    assert OpeningHours.from_setting({"time_zone": "Mars/Olympus"}) == OpeningHours()
    assert OpeningHours.from_setting("09:00-17:00") == OpeningHours()


@pytest.mark.parametrize("values, message", [
    ({"time_zone": "Europe/Pariss"}, "'Europe/Pariss' is not a time zone"),
    ({"time_zone": "../../etc/passwd"}, "is not a time zone"),
    ({"weekly": {"mon": "17:00-09:00"}}, "Monday: 17:00-09:00 ends before it starts"),
    ({"weekly": {"tue": "9-5"}}, "Tuesday: '9-5' is not a range such as 09:00-17:30"),
    ({"weekly": {"wed": "09:00-12:00, 11:00-13:00"}}, "Wednesday: 09:00-12:00 and 11:00-13:00 overlap"),
    ({"weekly": {"thu": "25:00-26:00"}}, "is not a range"),
    ({"closed_dates": "2026-02-30"}, "'2026-02-30' is not a date such as 2026-12-25"),
    ({"closed_dates": "25/12/2026"}, "is not a date"),
    ({"closed_dates": "2026-12-26..2026-12-24"}, "ends before it starts"),
    ({"weekly": {}}, "Give the opening hours of at least one day"),
    ({"available_when": "sometimes"}, "Available is one of"),
])
def test_bad_input_gets_a_clear_sentence(values, message):
    with pytest.raises(InvalidRequest) as caught:
        hours(**values)
    assert message in caught.value.message


def test_operators_only_needs_no_hours():
    online_only = OpeningHours.parse({"time_zone": "UTC", "available_when": "operators"})
    assert not online_only.has_hours and online_only.within_hours(paris(2026, 12, 5, 3, 0))
