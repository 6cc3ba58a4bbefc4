"""Cost and abuse caps on AI replies, per site (settings["ai"]["caps"]).

Counting reads the store: AI replies of the session in the last hour, of the site in the last
24 hours. That survives restarts and holds across several server processes, which in-memory
counters would not (each process would allow the full cap). Cap notices themselves are stored
with role "system", so a visitor who keeps writing past the cap does not extend it forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from server.ai.phrases import CAP_INPUT, CAP_SESSION, CAP_SITE, pick
from server.ai.settings import ai_settings
from server.store.base import Store
from server.store.models import Site

DEFAULT_REPLIES_PER_SESSION_HOUR = 30
DEFAULT_MAX_INPUT_CHARS = 4000


@dataclass(frozen=True)
class Caps:
    replies_per_session_hour: int | None = DEFAULT_REPLIES_PER_SESSION_HOUR
    replies_per_site_day: int | None = None  # None: no limit
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS

    @classmethod
    def for_site(cls, site: Site) -> Caps:
        raw: Any = ai_settings(site).get("caps")
        if not isinstance(raw, dict):
            return cls()
        defaults = cls()
        return cls(
            replies_per_session_hour=raw.get("replies_per_session_hour",
                                             defaults.replies_per_session_hour),
            replies_per_site_day=raw.get("replies_per_site_day", defaults.replies_per_site_day),
            max_input_chars=raw.get("max_input_chars") or defaults.max_input_chars,
        )


@dataclass(frozen=True)
class CapNotice:
    phrases: dict[str, str]  # the notice in each language (server/ai/phrases.py)
    handoff: bool
    limit: int | None = None  # for a notice that names its limit

    def text(self, lang: str) -> str:
        text = pick(self.phrases, lang)
        return text if self.limit is None else text.format(limit=self.limit)


# The caps' windows, in seconds: replies per session an hour, per site a day.
SESSION_WINDOW = 3600
SITE_WINDOW = 86400


def _iso_ago(seconds: float) -> str:
    moment = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class CapChecker:
    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def replies_since(site: Site) -> str | None:
        """Where the session cap's window starts (for counting the session's replies along with
        its question); None when the site has no session cap."""
        return _iso_ago(SESSION_WINDOW) if Caps.for_site(site).replies_per_session_hour is not None else None

    async def check(self, site: Site, session_id: str | None, question: str, *,
                    session_replies: int | None = None) -> CapNotice | None:
        """A notice for the visitor when a cap stops the AI; None when the AI may answer.
        `session_replies`: the session's replies since replies_since(site), if counted already."""
        caps = Caps.for_site(site)
        if len(question) > caps.max_input_chars:
            # Shortening the message fixes this one; no need to call a person.
            return CapNotice(CAP_INPUT, handoff=False, limit=caps.max_input_chars)
        if session_id and caps.replies_per_session_hour is not None:
            used = session_replies if session_replies is not None else await self.store.count_messages(
                site.id, role="ai", since=_iso_ago(SESSION_WINDOW), session_id=session_id)
            if used >= caps.replies_per_session_hour:
                return CapNotice(CAP_SESSION, handoff=True)
        if caps.replies_per_site_day is not None:
            used = await self.store.count_messages(site.id, role="ai", since=_iso_ago(SITE_WINDOW))
            if used >= caps.replies_per_site_day:
                return CapNotice(CAP_SITE, handoff=True)
        return None
