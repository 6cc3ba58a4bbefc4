"""A site's numbers over a date range: conversations, visitor messages, the share the AI answered
alone, handoffs, the median wait for a person, ratings and the busiest hours. The store aggregates;
this turns its counts into what the dashboard shows, in the site's time zone (UTC unless the site
has one)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.charts import BarChart, bar_chart
from server.errors import InvalidRequest
from server.store.base import Store
from server.store.models import ISO_FORMAT, Site, SiteActivity

DEFAULT_DAYS = 30
MAX_DAYS = 366  # the range cap: at most 24 * 366 hour rows come back from the store


@dataclass(frozen=True)
class DateRange:
    first: date
    last: date  # inclusive

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


@dataclass(frozen=True)
class Numbers:
    site: Site
    dates: DateRange
    zone: str  # the IANA name the dates and hours are in
    activity: SiteActivity
    ai_share: float | None  # of conversations, answered by the AI alone (0 to 1)
    rating_count: int
    rating_average: float | None
    ratings: list[tuple[int, int]]  # (score, conversations), 1 to 5
    hours: list[tuple[int, int]]  # (hour of day 0-23 in the zone, visitor messages)
    hours_chart: BarChart
    ratings_chart: BarChart

    @property
    def median_wait_text(self) -> str:
        return duration_text(self.activity.median_first_reply)

    @property
    def busiest_hour(self) -> int | None:
        count, hour = max(((count, -hour) for hour, count in self.hours), default=(0, 0))
        return -hour if count else None


def duration_text(seconds: float | None) -> str:
    """'45 s', '3 min 15 s', '2 h 5 min'; '–' when there is nothing to measure."""
    if seconds is None:
        return "–"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def site_zone(site: Site) -> ZoneInfo:
    """The site's time zone (an IANA name in its settings), else UTC."""
    name = site.setting("timezone", None)
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def parse_range(first: str, last: str, today: date) -> DateRange:
    """From/to as YYYY-MM-DD (both included); empty means the last DEFAULT_DAYS days to today."""
    try:
        end = date.fromisoformat(last) if last else today
        start = date.fromisoformat(first) if first else end - timedelta(days=DEFAULT_DAYS - 1)
    except ValueError:
        raise InvalidRequest("Dates are written YYYY-MM-DD, for example 2026-03-01.") from None
    if start > end:
        raise InvalidRequest("The range starts after it ends.")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"A range is at most {MAX_DAYS} days.")
    return DateRange(start, end)


def _utc(day: date, zone: ZoneInfo) -> str:
    return datetime.combine(day, time(), zone).astimezone(timezone.utc).strftime(ISO_FORMAT)


class Insights:
    def __init__(self, store: Store) -> None:
        self.store = store

    def today(self, site: Site) -> date:
        return datetime.now(site_zone(site)).date()

    async def numbers(self, site: Site, dates: DateRange) -> Numbers:
        zone = site_zone(site)
        activity = await self.store.site_activity(
            site.id, since=_utc(dates.first, zone), until=_utc(dates.last + timedelta(days=1), zone))
        by_hour = [0] * 24
        for hour, count in list(activity.messages_by_hour.items())[:24 * (MAX_DAYS + 2)]:
            utc = datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
            by_hour[utc.astimezone(zone).hour] += count
        ratings = [(score, activity.ratings.get(score, 0)) for score in range(1, 6)]
        rated = sum(count for _, count in ratings)
        zone_name = str(zone.key)
        hours = list(enumerate(by_hour))
        return Numbers(
            site=site, dates=dates, zone=zone_name, activity=activity,
            ai_share=activity.ai_only / activity.conversations if activity.conversations else None,
            rating_count=rated,
            rating_average=sum(score * count for score, count in ratings) / rated if rated else None,
            ratings=ratings, hours=hours,
            hours_chart=bar_chart(
                "Visitor messages by hour of day",
                f"Bars for the 24 hours of the day ({zone_name}); the table beside lists the counts.",
                [(f"{hour:02d}", count) for hour, count in hours]),
            ratings_chart=bar_chart(
                "Ratings", "Bars for the conversations rated 1 to 5 stars; the table beside lists the counts.",
                [(f"{score}★", count) for score, count in ratings]))
