"""How stored records look on the wire (the contract's shapes)."""

from __future__ import annotations

from json.encoder import encode_basestring  # json.dumps's own string encoder (ensure_ascii=False)
from typing import Any, Callable

from server.chat import ChatService
from server.store.models import (
    Conversation,
    InboxEntry,
    Message,
    Note,
    Operator,
    ProactiveMessage,
    Site,
    handoff_text,
)
from server.turns import TurnEvent

from handlers.base import dumps


def message_json(message: Message, chat: ChatService, base_url: str) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at,
        "message_id": message.message_id,
        "image_url": chat.image_url(message, base_url),
        "operator_name": message.operator_name,
        "sources": [s.as_dict() for s in message.sources],
        "status": message.status,
    }


def proactive_json(message: ProactiveMessage) -> dict[str, Any]:
    return {"id": message.id, "content": message.content, "created_at": message.created_at,
            "from": message.sender}


def turn_event_json(event: TurnEvent) -> dict[str, Any]:
    """One event of the answer stream (POST /api/v1/chat/stream)."""
    if event.type == "chunk":
        return {"type": "chunk", "content": event.content}
    if event.type == "error":
        assert event.error is not None
        return {"type": "error", "error": event.error.message, "code": event.error.code}
    return {"type": "done", "meta": event.meta}


def turn_event_text(event: TurnEvent) -> str:
    """turn_event_json(event) as compact JSON (handlers/base.py's dumps). A chunk, sent for every
    token, is put together around its encoded text: json.dumps with options builds an encoder per
    call, which was 40 % of handing a chunk to the visitor."""
    if event.type == "chunk":
        return '{"type":"chunk","content":' + encode_basestring(event.content) + "}"
    return dumps(turn_event_json(event))


# -- the dashboard --------------------------------------------------------------------------------
def visitor_label(conversation: Conversation) -> str:
    return (conversation.contact_name or conversation.email
            or f"Visitor {conversation.session_id[-6:]}")


def conversation_summary_json(conversation: Conversation, site: Site, *, online: bool,
                              unread: int = 0, last_message: Message | None = None) -> dict[str, Any]:
    last = None
    if last_message is not None:
        text = last_message.content or ("[image]" if last_message.image_key else "")
        last = {"role": last_message.role, "content": text[:160], "created_at": last_message.created_at}
    return {
        "id": conversation.id, "session_id": conversation.session_id,
        "site_id": site.id, "site_name": site.name,
        "visitor": visitor_label(conversation),
        "email": conversation.email, "phone": conversation.phone,
        "page_url": conversation.page_url, "page_title": conversation.page_title,
        "mode": conversation.mode, "handoff": conversation.handoff,
        "handoff_reason": conversation.handoff_reason, "handoff_why": handoff_text(conversation.handoff_reason),
        "closed": conversation.closed,
        "assignee_id": conversation.assignee_id,
        "updated_at": conversation.updated_at, "created_at": conversation.created_at,
        "unread": unread, "online": online, "last_message": last,
    }


def inbox_json(entries: list[InboxEntry], sites: dict[int, Site],
               is_online: Callable[[Conversation], bool]) -> list[dict[str, Any]]:
    return [conversation_summary_json(e.conversation, sites[e.conversation.site_id],
                                      online=is_online(e.conversation), unread=e.unread,
                                      last_message=e.last_message)
            for e in entries if e.conversation.site_id in sites]


def note_json(note: Note) -> dict[str, Any]:
    return {"id": note.id, "author": note.author, "content": note.content,
            "created_at": note.created_at}


def conversation_detail_json(conversation: Conversation, site: Site, *, online: bool,
                             blocked: bool) -> dict[str, Any]:
    return {
        **conversation_summary_json(conversation, site, online=online),
        "contact_name": conversation.contact_name, "lang": conversation.lang,
        "user_agent": conversation.user_agent, "ip": conversation.ip,
        "rating": conversation.rating, "rating_comment": conversation.rating_comment,
        "blocked": blocked, "read_through": conversation.read_through,
        "last_seen_at": conversation.last_seen_at,
    }


def operator_json(operator: Operator) -> dict[str, Any]:
    return {"id": operator.id, "name": operator.name, "email": operator.email,
            "role": operator.role, "disabled": operator.disabled, "site_ids": list(operator.site_ids),
            "two_factor": operator.totp_secret is not None}
