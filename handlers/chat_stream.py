"""POST /api/v1/chat/stream: the visitor's message in, the answer out as Server-Sent Events."""

from __future__ import annotations

import contextlib

from server.visitor import TurnRequest
from server.turns import Turn
from server.validation import LANG_RE, MAX_URL_LENGTH, MESSAGE_ID_RE, string_field

from handlers.base import ApiHandler, dumps


class ChatStreamHandler(ApiHandler):
    async def post(self) -> None:
        data = self.json_body()
        visitor = await self.visitor(data)
        request = TurnRequest(
            text=string_field(data, "message", max_length=4000),  # type: ignore[arg-type]
            message_id=string_field(data, "message_id", required=False, max_length=66,
                                    pattern=MESSAGE_ID_RE),
            lang=string_field(data, "lang", required=False, max_length=35, pattern=LANG_RE),
            page_url=string_field(data, "page_url", required=False, max_length=MAX_URL_LENGTH),
            page_title=string_field(data, "page_title", required=False, max_length=300),
        )
        # Every refusal (bad input, blocked, rate limit) is raised above or here, before any SSE byte.
        turn = await self.chat.start_turn(visitor, request)
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        await self.hold(self._relay(turn))

    async def _relay(self, turn: Turn) -> None:
        # Headers go out at once, so the widget knows its message was accepted before any text.
        if not await self.safe_flush():
            return
        keepalive = float(self.settings.get("sse_keepalive", 15.0))
        async with contextlib.aclosing(turn.follow(keepalive=keepalive)) as events:
            async for event in events:
                if event.type == "keepalive":
                    self.write(": keepalive\n\n")
                else:
                    self.write(f"data: {dumps(event.data)}\n\n")
                if not await self.safe_flush():
                    return
