"""Who a widget request speaks for, and what a visitor's message asks."""

from __future__ import annotations

from dataclasses import dataclass

from server.hub import session_topic
from server.store.models import Site


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who is asking: a session of a site, seen from an IP address. Slots: one is kept per held
    request."""

    site: Site
    session_id: str
    ip: str | None = None
    user_agent: str | None = None

    @property
    def topic(self) -> str:
        return session_topic(self.site.id, self.session_id)

    @property
    def log_ref(self) -> str:
        return f"site={self.site.id} session={self.session_id[:12]}…"


@dataclass(frozen=True)
class TurnRequest:
    text: str
    message_id: str | None
    lang: str | None
    page_url: str | None
    page_title: str | None
