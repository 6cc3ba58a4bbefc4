"""The widget's JSON endpoints (all but the SSE stream and the upload)."""

from __future__ import annotations

from typing import Any, Awaitable, TypeVar

import tornado.web

from server import validation
from server.chat import HISTORY_LIMIT_MAX
from server.sites import kept_page_url
from server.visitor import Visitor
from server.errors import InvalidRequest
from server.store.models import Message
from server.validation import MAX_URL_LENGTH, int_field, query_int, query_seconds, string_field

from handlers.base import ApiHandler
from handlers.serializers import message_json, proactive_json

T = TypeVar("T")
MAX_WAIT_SECONDS = 30.0
MAX_MESSAGE_CURSOR = 2**62


class PublicUrlMixin(ApiHandler):
    @property
    def base_url(self) -> str:
        configured = self.settings.get("public_url")
        return configured or f"{self.request.protocol}://{self.request.host}"

    def messages_json(self, messages: list[Message]) -> list[dict[str, Any]]:
        return [message_json(m, self.chat, self.base_url) for m in messages]


class HeldReadHandler(PublicUrlMixin):
    """GETs that take an `after` cursor and may be held open for `wait` seconds.

    Thousands are held at once, each keeping its handler's frame: they keep the visitor and the
    two numbers, not the query they came from."""

    async def hold(self, awaitable: Awaitable[T]) -> T | None:
        """As JsonHandler.hold; while the server shuts down, the answer (at once, with what there
        is) also tells the client to close the connection (browsers and HTTP libraries do): its
        next request goes on a new connection, which another process takes, not straight back to
        this one for another quick answer."""
        result = await super().hold(awaitable)
        if self.chat.hub.closing:
            self.set_header("Connection", "close")
        return result

    async def held_read(self) -> tuple[Visitor, int | None, float]:
        """The visitor, the `after` cursor and the `wait`, validated."""
        query = self.query()
        return (
            await self.visitor(query),
            query_int(query.get("after"), "after", minimum=0, maximum=MAX_MESSAGE_CURSOR),
            query_seconds(query.get("wait"), "wait", maximum=MAX_WAIT_SECONDS),
        )


class HistoryHandler(HeldReadHandler):
    async def get(self) -> None:
        visitor, after, wait = await self.held_read()
        limit = query_int(self.get_query_argument("limit", None), "limit", minimum=1,
                          maximum=HISTORY_LIMIT_MAX) or 50
        result = await self.hold(self.chat.history(visitor, after=after, limit=limit, wait=wait))
        if result is None:  # the client left
            return
        conversation, messages = result
        self.write_json({
            "success": True,
            "messages": self.messages_json(messages),
            "conversation_id": conversation.id if conversation else None,
            "mode": conversation.mode if conversation else "ai",
            "ask_email": bool(conversation and conversation.unreachable_while_waiting),
        })


class OperatorMessagesHandler(HeldReadHandler):
    async def get(self) -> None:
        visitor, after, wait = await self.held_read()
        result = await self.hold(self.chat.operator_messages(visitor, after=after, wait=wait))
        if result is None:
            return
        messages, mode = result
        self.write_json({"success": True, "messages": self.messages_json(messages), "mode": mode})


class PendingProactiveHandler(HeldReadHandler):
    async def get(self) -> None:
        visitor, after, wait = await self.held_read()
        page_url = kept_page_url(visitor.site, string_field(
            self.query(), "page_url", required=False, max_length=MAX_URL_LENGTH))
        messages = await self.hold(
            self.chat.pending_proactive(visitor, after=after, wait=wait, page_url=page_url))
        if messages is None:
            return
        self.write_json({"success": True, "messages": [proactive_json(m) for m in messages]})


class BlockStatusHandler(ApiHandler):
    async def get(self) -> None:
        visitor = await self.visitor(self.query())
        self.write_json({"success": True, "blocked": await self.chat.is_blocked(visitor)})


class EmailHandler(ApiHandler):
    async def post(self) -> None:
        data = self.json_body()
        visitor = await self.visitor(data)
        email = validation.normalise_email(string_field(data, "email", max_length=254) or "")
        await self.chat.save_contact(visitor, email=email)
        self.write_json({"success": True, "message": "Email saved"})


class ContactHandler(ApiHandler):
    async def post(self) -> None:
        data = self.json_body()
        visitor = await self.visitor(data)
        raw_email = string_field(data, "email", required=False, max_length=254)
        raw_phone = string_field(data, "phone", required=False, max_length=40)
        name = string_field(data, "name", required=False, max_length=200)
        if not raw_email and not raw_phone:
            raise InvalidRequest("Give at least an 'email' or a 'phone'.")
        await self.chat.save_contact(
            visitor,
            email=validation.normalise_email(raw_email) if raw_email else None,
            phone=validation.normalise_phone(raw_phone) if raw_phone else None,
            name=name,
        )
        self.write_json({"success": True, "message": "Contact saved"})


class RateHandler(ApiHandler):
    async def post(self) -> None:
        data = self.json_body()
        visitor = await self.visitor(data)
        score = int_field(data, "score", minimum=1, maximum=5)
        await self.chat.rate(visitor, score)  # type: ignore[arg-type]
        self.write_json({"success": True})


class RateCommentHandler(ApiHandler):
    async def post(self) -> None:
        data = self.json_body()
        visitor = await self.visitor(data)
        comment = string_field(data, "comment", max_length=2000)
        await self.chat.comment(visitor, comment)  # type: ignore[arg-type]
        self.write_json({"success": True})


class ApiNotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason="No such API endpoint.")
