"""The records the store keeps. Plain dataclasses: the store backends fill them, services read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Mode = Literal["ai", "operator"]
Role = Literal["visitor", "ai", "operator", "system"]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Site:
    id: int
    site_key: str
    name: str
    allowed_origins: list[str]
    settings: dict[str, Any] = field(repr=False)  # may hold a model API key: never in a log line
    enabled: bool
    created_at: str

    def setting(self, name: str, default: Any) -> Any:
        return self.settings.get(name, default)


@dataclass
class Conversation:
    id: int
    site_id: int
    session_id: str
    mode: Mode
    created_at: str
    updated_at: str
    email: str | None = None
    phone: str | None = None
    contact_name: str | None = None
    rating: int | None = None
    rating_comment: str | None = None
    handoff: bool = False
    lang: str | None = None
    page_url: str | None = None
    page_title: str | None = None
    ip: str | None = None


# Fields of a conversation that services may change after creation.
CONVERSATION_UPDATABLE = frozenset(
    {"mode", "email", "phone", "contact_name", "rating", "rating_comment", "handoff", "lang",
     "page_url", "page_title", "ip"}
)


@dataclass(frozen=True)
class Source:
    title: str
    url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "url": self.url}


@dataclass
class Message:
    id: int
    conversation_id: int
    role: Role
    content: str
    created_at: str
    message_id: str | None = None
    reply_to: str | None = None
    image_key: str | None = None
    operator_name: str | None = None
    sources: list[Source] = field(default_factory=list)
    status: Literal["complete", "interrupted"] = "complete"
    usage: dict[str, Any] | None = None  # token counts of an AI answer, as the upstream reported
    # An AI answer's best relevance of the site's knowledge to its question (0 to 1): below the
    # answerer's floor, the pages did not cover it. None for other messages.
    relevance: float | None = None


@dataclass(frozen=True)
class KnowledgeGap:
    """A visitor question the site's knowledge did not cover well, with the answer's relevance."""

    question: str
    relevance: float
    session_id: str
    asked_at: str


@dataclass(frozen=True)
class ProactiveMessage:
    id: int
    site_id: int
    session_id: str
    content: str
    sender: Literal["operator", "rule"]
    created_at: str


@dataclass(frozen=True)
class KnowledgeDocument:
    id: int
    site_id: int
    title: str
    url: str | None
    content: str
    updated_at: str


@dataclass(frozen=True)
class Event:
    id: int
    topic: str
    kind: str
    payload: dict[str, Any]
    origin: str
