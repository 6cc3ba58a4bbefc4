"""POST /api/v1/chat/stream: the visitor's message in, the answer out as Server-Sent Events."""

from __future__ import annotations

from server.sites import kept_page_url
from server.visitor import TurnRequest
from server.validation import LANG_RE, MAX_URL_LENGTH, MESSAGE_ID_RE, string_field

from handlers.base import ApiHandler
from handlers.serializers import turn_event_text
from handlers.sse import EventStreamMixin


class ChatStreamHandler(EventStreamMixin, ApiHandler):
    async def post(self) -> None:
        data = self.json_body()
        visitor = await self.visitor(data)
        request = TurnRequest(
            text=string_field(data, "message", max_length=4000),  # type: ignore[arg-type]
            message_id=string_field(data, "message_id", required=False, max_length=66,
                                    pattern=MESSAGE_ID_RE),
            lang=string_field(data, "lang", required=False, max_length=35, pattern=LANG_RE),
            page_url=kept_page_url(visitor.site, string_field(data, "page_url", required=False,
                                                              max_length=MAX_URL_LENGTH)),
            page_title=string_field(data, "page_title", required=False, max_length=300),
        )
        # Every refusal (bad input, blocked, rate limit) is raised above or here, before any SSE byte.
        turn = await self.chat.start_turn(visitor, request)
        self.start_event_stream()
        # Headers go out at once, so the widget knows its message was accepted before any text.
        await self.hold(self.send_pushed(turn.push_to,
                                         lambda event: f"data: {turn_event_text(event)}\n\n"))
