"""Opening hours: when a person can answer a site's visitors.

A site keeps, in its settings under `opening_hours`, its weekly hours (several ranges a day) in its
own IANA time zone (the site's `timezone` setting, which the Numbers page uses too), closed dates,
and its choice of what "available" means:

- `always` (the default): a person may answer at any time; the widget never says it is away;
- `hours`: within the weekly hours, except on closed dates;
- `operators`: while an operator who may answer the site (an admin, or an agent assigned to it)
  has the dashboard open or has used it within the last two minutes;
- `both`: within hours and with an operator online.

Hours are wall-clock times in the site's zone, so 09:00 stays 09:00 across a daylight-saving
change. A range ends after it starts on the same day; a night across midnight is an evening range
ending at 24:00 and a morning range from 00:00 on the next day (they join up). A closed date
closes the ranges of that calendar day.

Stored as text, the same syntax the dashboard and the CLI take: `"timezone": "Europe/Paris"`, and
`"opening_hours": {"weekly": {"mon": ["09:00-12:00", "13:00-17:30"], ...}, "closed_dates":
["2026-12-25", "2026-12-31..2027-01-01"], "available_when": "hours", "away_message": ""}`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from server.audit import Actor, AuditLog
from server.errors import InvalidRequest
from server.sites import SiteService
from server.store.base import Store
from server.store.models import Site

SETTING = "opening_hours"
ZONE_SETTING = "timezone"  # the site's time zone, shared with the Numbers page (server/insights.py)
AVAILABLE_WHEN = ("always", "hours", "operators", "both")
AVAILABLE_WHEN_LABELS = {
    "always": "Always (no opening hours)",
    "hours": "Within opening hours",
    "operators": "When an operator is online",
    "both": "Within opening hours, with an operator online",
}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MAX_RANGES_PER_DAY = 12
MAX_CLOSED_ENTRIES = 400
MAX_CLOSED_SPAN_DAYS = 366
MAX_AWAY_MESSAGE = 300
# How far ahead the next opening is looked for: a year of closed dates still finds it.
LOOKAHEAD_DAYS = 400
# An operator counts as online while their dashboard says so this recently. The dashboard's live
# feed says so every PRESENCE_HEARTBEAT seconds; any signed-in request says so too.
PRESENCE_SECONDS = 120
PRESENCE_HEARTBEAT = 45
MINUTES_PER_DAY = 24 * 60

ZONE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}$")
TIME_RE = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -- reading what an admin typed ------------------------------------------------------------------
def parse_time_zone(raw: str) -> str:
    name = raw.strip()
    refusal = InvalidRequest(f"'{name[:64]}' is not a time zone; use an IANA name such as "
                             "Europe/Paris or America/New_York.")
    if not ZONE_NAME_RE.match(name) or len(name) > 64:
        raise refusal
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise refusal from None
    return name


def _minutes(text: str) -> int | None:
    match = TIME_RE.match(text)
    if not match:
        return None
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours == 24 and minutes:
        return None
    return hours * 60 + minutes


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, order=True)
class TimeRange:
    """Minutes from local midnight: start in [0, 1440), end in (start, 1440]."""
    start: int
    end: int

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


def parse_ranges(raw: str, day: str = "This day") -> tuple[TimeRange, ...]:
    """`09:00-12:00, 13:00-17:30` (commas, semicolons or spaces between ranges); empty: closed."""
    dashed = re.sub(r"\s*[-\u2013\u2014]\s*", "-", raw)  # 09:00 - 12:00, 09:00–12:00
    pieces = [p for p in re.split(r"[,;\s]+", dashed.strip()) if p]
    if len(pieces) > MAX_RANGES_PER_DAY:
        raise InvalidRequest(f"{day}: at most {MAX_RANGES_PER_DAY} ranges a day.")
    ranges = []
    for piece in pieces:
        start_text, dash, end_text = piece.partition("-")
        start, end = _minutes(start_text), _minutes(end_text)
        if not dash or start is None or end is None or start >= MINUTES_PER_DAY:
            raise InvalidRequest(f"{day}: '{piece[:40]}' is not a range such as 09:00-17:30.")
        if end <= start:
            raise InvalidRequest(
                f"{day}: {piece} ends before it starts. A night across midnight is two ranges: "
                f"the evening until 24:00, and 00:00 onwards on the next day.")
        ranges.append(TimeRange(start, end))
    ranges.sort()
    for before, after in zip(ranges, ranges[1:]):
        if after.start < before.end:
            raise InvalidRequest(f"{day}: {before} and {after} overlap.")
    return tuple(ranges)


def _parse_date(text: str) -> date:
    if DATE_RE.match(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise InvalidRequest(f"'{text[:40]}' is not a date such as 2026-12-25.")


def parse_closed_dates(raw: str | list[str]) -> tuple[str, ...]:
    """Dates (`2026-12-25`) or spans (`2026-12-24..2026-12-26`), one a line or comma-separated;
    returned sorted and without repeats, in that same text form."""
    entries = raw if isinstance(raw, list) else re.split(r"[,\n]+", raw)
    cleaned = [e.strip().replace(" ", "") for e in entries if isinstance(e, str) and e.strip()]
    if len(cleaned) > MAX_CLOSED_ENTRIES:
        raise InvalidRequest(f"At most {MAX_CLOSED_ENTRIES} closed dates or spans.")
    kept: dict[tuple[date, date], str] = {}
    for entry in cleaned:
        first_text, dots, last_text = entry.partition("..")
        first = _parse_date(first_text)
        last = _parse_date(last_text) if dots else first
        if last < first:
            raise InvalidRequest(f"The span {entry} ends before it starts.")
        if (last - first).days >= MAX_CLOSED_SPAN_DAYS:
            raise InvalidRequest(f"The span {entry} is longer than a year.")
        kept[(first, last)] = f"{first}..{last}" if dots and last != first else str(first)
    return tuple(kept[key] for key in sorted(kept))


def _expand(entries: tuple[str, ...]) -> frozenset[date]:
    days: set[date] = set()
    for entry in entries:
        first_text, _, last_text = entry.partition("..")
        first = date.fromisoformat(first_text)
        last = date.fromisoformat(last_text) if last_text else first
        days.update(first + timedelta(days=n) for n in range((last - first).days + 1))
    return frozenset(days)


def _first_instant_at_or_after(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The first instant whose wall time on `day` is `minute` or later: the wall time itself,
    or, for a start in a spring-forward gap (02:30 that never happens), when the clocks jump."""
    wall = datetime(day.year, day.month, day.day, minute // 60, minute % 60)
    # fold=0 reads the wall time with the offset in force before a change, fold=1 after it.
    before = wall.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)
    after = wall.replace(tzinfo=zone, fold=1).astimezone(timezone.utc)
    if before <= after:  # the wall time exists (once, or twice in autumn: the first of them)
        return before.astimezone(zone)
    low, high = after, before  # in a gap: the wall clock is short of `wall` at low, past it at high
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.astimezone(zone).replace(second=0, microsecond=0)


# -- the hours themselves -------------------------------------------------------------------------
@dataclass(frozen=True)
class OpeningHours:
    time_zone: str = "UTC"
    weekly: tuple[tuple[TimeRange, ...], ...] = ((),) * 7  # Monday first
    closed_dates: tuple[str, ...] = ()
    available_when: str = "always"
    away_message: str = ""
    _closed: frozenset[date] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_closed", _expand(self.closed_dates))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def has_hours(self) -> bool:
        return any(self.weekly)

    @property
    def uses_hours(self) -> bool:
        return self.available_when in ("hours", "both")

    @property
    def uses_operators(self) -> bool:
        return self.available_when in ("operators", "both")

    def is_closed_date(self, day: date) -> bool:
        return day in self._closed

    def within_hours(self, at: datetime) -> bool:
        """Whether `at` (any aware datetime) falls in the weekly hours, on a day not closed.
        Without weekly hours, always."""
        if not self.has_hours:
            return True
        local = at.astimezone(self.zone)
        if self.is_closed_date(local.date()):
            return False
        minute = local.hour * 60 + local.minute
        return any(r.start <= minute < r.end for r in self.weekly[local.weekday()])

    def next_opening(self, at: datetime) -> datetime | None:
        """When the hours next open after `at`, in the site's zone; None within hours, without
        weekly hours, or with none in the next LOOKAHEAD_DAYS days."""
        if not self.has_hours or self.within_hours(at):
            return None
        zone = self.zone
        today = at.astimezone(zone).date()
        for offset in range(LOOKAHEAD_DAYS):
            day = today + timedelta(days=offset)
            if self.is_closed_date(day):
                continue
            for time_range in self.weekly[day.weekday()]:
                opening = _first_instant_at_or_after(day, time_range.start, zone)
                if opening > at and self.within_hours(opening):
                    return opening
        return None

    # -- storage ----------------------------------------------------------------------------
    def to_setting(self) -> dict[str, Any]:
        """What `opening_hours` holds (the zone is kept apart, as the site's `timezone`)."""
        return {"weekly": {day: [str(r) for r in ranges]
                           for day, ranges in zip(WEEKDAYS, self.weekly) if ranges},
                "closed_dates": list(self.closed_dates),
                "available_when": self.available_when,
                "away_message": self.away_message}

    def settings_changes(self) -> dict[str, Any]:
        """The site settings to store: the hours, and the zone."""
        return {SETTING: self.to_setting(), ZONE_SETTING: self.time_zone}

    @classmethod
    def from_setting(cls, value: Any) -> OpeningHours:
        """What a site has stored; anything unreadable (an older or hand-edited value) counts
        as no hours at all rather than breaking the widget."""
        if not isinstance(value, dict):
            return cls()
        try:
            return cls.parse(value)
        except (InvalidRequest, TypeError, AttributeError):
            return cls()

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> OpeningHours:
        """From the stored form or from a form's fields (`weekly` as a day -> text or list
        mapping); InvalidRequest with a sentence for the admin when something is wrong."""
        weekly_raw = value.get("weekly") or {}
        if not isinstance(weekly_raw, Mapping):
            raise InvalidRequest("The weekly hours are given per day.")
        weekly = []
        for day, name in zip(WEEKDAYS, WEEKDAY_NAMES):
            raw = weekly_raw.get(day) or ""
            text = ", ".join(str(r) for r in raw) if isinstance(raw, list) else str(raw)
            weekly.append(parse_ranges(text, name))
        available_when = str(value.get("available_when") or "always")
        if available_when not in AVAILABLE_WHEN:
            raise InvalidRequest("Available is one of: " + ", ".join(AVAILABLE_WHEN) + ".")
        hours = cls(
            time_zone=parse_time_zone(str(value.get("time_zone") or "UTC")),
            weekly=tuple(weekly),
            closed_dates=parse_closed_dates(value.get("closed_dates") or []),
            available_when=available_when,
            away_message=str(value.get("away_message") or "").strip(),
        )
        if len(hours.away_message) > MAX_AWAY_MESSAGE:
            raise InvalidRequest(f"The away message is at most {MAX_AWAY_MESSAGE} characters.")
        if hours.uses_hours and not hours.has_hours:
            raise InvalidRequest("Give the opening hours of at least one day, or choose to be "
                                 "available whenever an operator is online.")
        return hours


def site_hours(site: Site) -> OpeningHours:
    stored = site.settings.get(SETTING)
    zone = site.settings.get(ZONE_SETTING)
    value = dict(stored) if isinstance(stored, dict) else {}
    value["time_zone"] = zone if isinstance(zone, str) and zone else "UTC"
    return OpeningHours.from_setting(value)


def form_values(hours: OpeningHours) -> dict[str, str]:
    """The hours as the site page's form shows them."""
    values = {day: ", ".join(str(r) for r in ranges) for day, ranges in zip(WEEKDAYS, hours.weekly)}
    return {**values, "time_zone": hours.time_zone, "closed_dates": "\n".join(hours.closed_dates),
            "available_when": hours.available_when, "away_message": hours.away_message}


FORM_FIELDS = (*WEEKDAYS, "time_zone", "closed_dates", "available_when", "away_message")


# -- what is true now -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Availability:
    open_now: bool  # a person can answer now, by the site's own rule
    within_hours: bool
    operators_online: bool
    next_opening: datetime | None  # in the site's zone
    hours: OpeningHours

    def public(self) -> dict[str, Any]:
        """The fields GET /api/v1/chat/config adds for the widget."""
        return {
            "open_now": self.open_now,
            "operators_online": self.operators_online,
            "next_opening": self.next_opening.isoformat(timespec="seconds") if self.next_opening else None,
            "available_when": self.hours.available_when,
            "time_zone": self.hours.time_zone,
            "away_message": self.hours.away_message or None,
        }

    def describe(self) -> str:
        """One line for an admin: the dashboard and the CLI say it."""
        if self.open_now:
            return "Open now: a handoff tells the visitor a person is coming."
        when = ""
        if self.next_opening is not None:
            when = f" Back {self.next_opening.strftime('%A %Y-%m-%d %H:%M')} ({self.hours.time_zone})."
        why = "nobody is online" if self.within_hours else "outside opening hours"
        return (f"Away now ({why}): the widget says so, the AI keeps answering and a handoff asks "
                f"for an email.{when}")


async def operators_online(store: Store, site_id: int,
                           presence_seconds: float = PRESENCE_SECONDS) -> bool:
    """Whether an operator who may answer the site is online: one store query however many
    operators there are, so the public config endpoint stays cheap."""
    return bool(await store.operators_present(since=time.time() - presence_seconds,
                                              site_id=site_id, limit=1))


class OpeningHoursService:
    """`clock` gives the time the hours are judged at (tests fix it); operator presence is
    judged by the wall clock, the one that stamps their sessions."""

    def __init__(self, store: Store, sites: SiteService, audit: AuditLog, *,
                 clock: Callable[[], float] = time.time,
                 presence_seconds: float = PRESENCE_SECONDS) -> None:
        self.store = store
        self.sites = sites
        self.audit = audit
        self.clock = clock
        self.presence_seconds = presence_seconds
        self._time_zones: list[str] | None = None

    def time_zones(self) -> list[str]:
        """Every IANA zone name this machine knows, for the dashboard's list (read once)."""
        if self._time_zones is None:
            self._time_zones = sorted(available_timezones())
        return self._time_zones

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    async def operators_online(self, site: Site) -> bool:
        return await operators_online(self.store, site.id, self.presence_seconds)

    async def availability(self, site: Site) -> Availability:
        hours = site_hours(site)
        now = self.now()
        online = await self.operators_online(site)
        within = hours.within_hours(now)
        open_now = {"always": True, "hours": within, "operators": online,
                    "both": within and online}[hours.available_when]
        next_opening = hours.next_opening(now) if hours.uses_hours and not within else None
        return Availability(open_now, within, online, next_opening, hours)

    async def someone_can_answer(self, site: Site) -> bool:
        return (await self.availability(site)).open_now

    async def save(self, site: Site, values: Mapping[str, Any], actor: Actor) -> Site:
        """Check and store a site's hours (the form's fields, or the stored form); audited."""
        weekly = {day: values.get(day, "") for day in WEEKDAYS}
        if isinstance(values.get("weekly"), Mapping):
            weekly = dict(values["weekly"])
        hours = OpeningHours.parse({**values, "weekly": weekly})
        changes = hours.settings_changes()
        updated = await self.sites.update_settings(site.id, changes)
        if any(site.settings.get(name) != value for name, value in changes.items()):
            await self.audit.record(actor, "site.hours", site_id=site.id, target=site.name,
                                    available_when=hours.available_when, time_zone=hours.time_zone)
        return updated
