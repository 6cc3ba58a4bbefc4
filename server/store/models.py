"""The records the store keeps. Plain dataclasses: the store backends fill them, services read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Mode = Literal["ai", "operator"]
Role = Literal["visitor", "ai", "operator", "system"]


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime(ISO_FORMAT)


def iso_seconds_between(earlier: str, later: str) -> int:
    """Whole seconds from one stored time (utc_now_iso's format) to another."""
    return round((datetime.strptime(later, ISO_FORMAT) - datetime.strptime(earlier, ISO_FORMAT)).total_seconds())


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
    handoff_reason: str | None = None  # why it needs a person (HANDOFF_REASONS); None when not
    lang: str | None = None
    page_url: str | None = None
    page_title: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    assignee_id: int | None = None  # the operator it is assigned to
    closed: bool = False
    read_through: int = 0  # the last message id operators have seen
    last_seen_at: float | None = None  # the visitor's last request (epoch seconds)
    # Kept by the store itself (never through update_conversation), for the site's numbers: when
    # the visitor, the AI and an operator first wrote, when the conversation was first handed to a
    # person, and the seconds from that handoff to the first operator message after it.
    first_visitor_at: str | None = None
    first_ai_at: str | None = None
    first_operator_at: str | None = None
    handoff_at: str | None = None
    first_reply_wait: float | None = None

    @property
    def unreachable_while_waiting(self) -> bool:
        """Waiting for a person, with neither an email nor a phone number to reach the visitor by
        (the widget asks for an email again after a reload)."""
        return self.handoff and not (self.email or self.phone)


# Fields of a conversation that services may change after creation.
CONVERSATION_UPDATABLE = frozenset(
    {"mode", "email", "phone", "contact_name", "rating", "rating_comment", "handoff", "handoff_reason", "lang",
     "page_url", "page_title", "ip", "user_agent", "assignee_id", "closed", "read_through",
     "last_seen_at"}
)


# Why a conversation was handed to a person, in the words operators read on the dashboard. Stored
# with the conversation (checked by check_handoff) and carried by the live `handoff` event, so the
# inbox can say what a person is needed for before anyone opens it.
HANDOFF_REASONS: dict[str, str] = {
    "asked_for_person": "the visitor asked for a person",
    "not_covered": "the site's knowledge does not cover the question",
    "ai_handed_over": "the AI chose to hand it over",
    "cap_reached": "the AI's reply limit was reached",
    "ai_failed": "the AI could not answer (model error or timeout)",
    "operator_lost_access": "the operator who had taken it over lost access to the site",
}


def handoff_text(reason: str | None) -> str | None:
    """The plain words for a stored reason; None for none (a conversation handed over before
    reasons were kept has none)."""
    return HANDOFF_REASONS.get(reason) if reason else None


def handoff_event(session_id: str, reason: str) -> dict[str, Any]:
    """The payload of the operators' live `handoff` event: whose conversation, and why in words
    the dashboard shows as they are."""
    return {"session_id": session_id, "reason": reason, "why": HANDOFF_REASONS[reason]}


def check_handoff(changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` to a conversation with its handoff reason checked: a handoff comes with one of
    HANDOFF_REASONS, a reason only with a handoff, and clearing the handoff clears the reason
    (so a conversation picked up never shows a stale why). Raises ValueError otherwise."""
    if "handoff" not in changes:
        if "handoff_reason" in changes:
            raise ValueError("a handoff reason is set only with the handoff")
        return changes
    reason = changes.get("handoff_reason")
    if changes["handoff"]:
        if reason not in HANDOFF_REASONS:
            raise ValueError(f"a handoff needs a reason, one of {sorted(HANDOFF_REASONS)}; got {reason!r}")
        return changes
    if reason is not None:
        raise ValueError("a conversation no longer handed over has no handoff reason")
    return {**changes, "handoff_reason": None}


# Conversation fields whose change is not activity: the inbox's order stays as it was.
QUIET_CONVERSATION_FIELDS = frozenset({"read_through", "last_seen_at", "user_agent", "page_url",
                                       "page_title"})


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
    relevance: float | None  # None: a question that ended in a handoff without an AI answer
    session_id: str
    asked_at: str
    handoff: bool = False  # the conversation was handed to a person after it


@dataclass(frozen=True)
class SiteActivity:
    """A site's numbers over [since, until), as the store aggregates them. A conversation counts in
    the range its visitor first wrote in; messages count in the range they were sent in."""

    conversations: int
    ai_only: int  # answered by the AI, with no handoff and no operator message
    handoffs: int  # handed to a person (the visitor asked, or the AI could not answer)
    answered_handoffs: int  # handoffs an operator wrote in after
    median_first_reply: float | None  # seconds from the handoff to the first operator message
    ratings: dict[int, int]  # score (1 to 5) -> conversations rated so
    visitor_messages: int
    messages_by_hour: dict[str, int]  # "YYYY-MM-DDTHH" (UTC) -> visitor messages sent in that hour


# Which conversation field a message's role sets the first time.
FIRST_MESSAGE_FIELD = {"visitor": "first_visitor_at", "ai": "first_ai_at", "operator": "first_operator_at"}


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
    file_name: str | None = None  # what it was read from, when not a URL (an upload, `kb add FILE`)


# What a fetch's own process writes as it goes; url, origin and started_at never change.
FETCH_JOB_UPDATABLE = frozenset({"state", "added", "message", "done", "total", "errors"})


@dataclass(frozen=True)
class FetchJob:
    """A URL or sitemap fetched into a site's knowledge in the background, as its process last
    wrote it (updated_at: unix seconds of that write, its heartbeat)."""

    id: int
    site_id: int
    url: str
    origin: str  # the process that runs it
    state: str  # fetching, done, failed, interrupted
    added: int
    message: str
    done: int  # pages fetched (or skipped) so far
    total: int  # pages to fetch: 1 for a page, a sitemap's pages once it is read
    errors: list[str]  # why pages were skipped (the first few)
    started_at: float
    updated_at: float


@dataclass(frozen=True)
class Event:
    id: int
    topic: str
    kind: str
    payload: dict[str, Any]
    origin: str


OperatorRole = Literal["admin", "agent"]


@dataclass(frozen=True)
class Operator:
    id: int
    email: str
    name: str
    role: OperatorRole
    password_hash: str = field(repr=False)
    disabled: bool
    created_at: str
    site_ids: tuple[int, ...] = ()  # an agent's sites; admins see every site
    totp_secret: str | None = field(default=None, repr=False)
    recovery_codes: tuple[str, ...] = field(default=(), repr=False)  # argon2 hashes, used ones removed
    prefs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# Fields of an operator that services may change.
OPERATOR_UPDATABLE = frozenset({"name", "role", "password_hash", "disabled", "totp_secret",
                                "recovery_codes", "prefs"})


@dataclass(frozen=True)
class OperatorSession:
    token_hash: str
    operator_id: int
    created_at: float
    last_seen: float
    ip: str | None
    user_agent: str | None
    second_factor_done: bool = True
    present_at: float | None = None  # when a dashboard tab last said it is open (live feed)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    created_at: str
    operator_id: int | None
    operator_email: str | None
    action: str
    site_id: int | None
    target: str | None
    detail: dict[str, Any]
    ip: str | None


@dataclass(frozen=True)
class Note:
    id: int
    conversation_id: int
    operator_id: int | None
    author: str
    content: str
    created_at: str


@dataclass(frozen=True)
class CannedReply:
    id: int
    site_id: int
    shortcut: str
    content: str


@dataclass(frozen=True)
class InboxEntry:
    """A conversation as the inbox lists it: the conversation, its last message, unread count."""
    conversation: Conversation
    last_message: Message | None
    unread: int
