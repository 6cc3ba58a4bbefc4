"""How stored records look on the wire (the contract's shapes)."""

from __future__ import annotations

from typing import Any

from server.chat import ChatService
from server.store.models import Message, ProactiveMessage
from server.turns import TurnEvent


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
