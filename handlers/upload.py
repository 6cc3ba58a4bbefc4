"""POST /api/v1/chat/upload-image: one image as multipart form data, streamed to disk.

The widget sends site_key and session_id in the query string as well as in the form, so the site,
the session's rates, the block list and the upload limits are checked before any of the body is
read; the body then goes through a streaming parser into a temporary file, never into memory.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from server.errors import ParleyError, TooLarge
from server.sites import MAX_UPLOAD_SETTING
from server.uploads import FORM_OVERHEAD, FormSpool, readable_size
from server.visitor import Visitor

from handlers.base import ApiHandler
from handlers.body_limit import AnswersBeforeBody, declared_length
from handlers.widget_api import PublicUrlMixin

# Room for the largest per-site image limit plus the multipart framing.
UPLOAD_BODY_LIMIT = MAX_UPLOAD_SETTING + 1024 * 1024


class UploadImageHandler(AnswersBeforeBody, PublicUrlMixin, ApiHandler):
    """A refusal, before the body (prepare) or while it streams in (take_chunk), is answered at once
    and the rest of the body read and dropped within bounds (AnswersBeforeBody): most clients read
    an answer only once they have sent their body, and would otherwise see a reset, not the JSON
    error. A client that sent `Expect: 100-continue` gets the refusal at once and sends nothing."""

    max_body_bytes = UPLOAD_BODY_LIMIT

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self._spool: FormSpool | None = None
        self._admitted: Visitor | None = None
        self._holds_slot = False

    async def prepare(self) -> None:
        if self.request.method not in self.allowed_methods():  # the 405, before work meant for a POST
            raise tornado.web.HTTPError(405)
        super().prepare()  # (a declared length over what any site allows never gets here: 413)
        content_type = self.request.headers.get("Content-Type", "")
        query = self.query()
        limit = MAX_UPLOAD_SETTING
        if "site_key" in query or "session_id" in query:
            self._admitted = await self.visitor(query)
            limit = await self.chat.admit_upload(self._admitted)
        declared = declared_length(self.request)
        if declared is not None and declared > limit + FORM_OVERHEAD:
            raise TooLarge(f"Images can be at most {readable_size(limit)}.")
        spool = self.chat.uploads.spool(content_type, limit)  # 400 unless multipart with a boundary
        self.chat.uploads.slots.take(self.request.remote_ip)
        self._holds_slot = True
        self._spool = spool

    def take_chunk(self, chunk: bytes) -> None:
        if self._spool is None:
            return
        try:
            self._spool.feed(chunk)  # the spool deletes its file when it refuses
        except ParleyError as refusal:
            self._release()  # the slot is for uploads being taken, not for bodies being dropped
            self.refuse(refusal)

    async def post(self) -> None:
        if self.answered or self._spool is None:  # refused while the body came in
            return
        spool = self._spool
        spool.finish()
        assert spool.image_path is not None
        visitor = self._admitted
        if visitor is None:  # the ids came in the form only (an older widget)
            visitor = await self.visitor(spool.fields)
            limit = await self.chat.admit_upload(visitor)
            if spool.image_size > limit:
                raise TooLarge(f"Images can be at most {readable_size(limit)}.")
        message = await self.chat.upload_image(visitor, spool.image_path)
        self.write_json({"success": True, "url": self.chat.image_url(message, self.base_url)})

    def _release(self) -> None:
        if self._spool is not None:
            self._spool.discard()
            self._spool = None
        if self._holds_slot:
            self._holds_slot = False
            self.chat.uploads.slots.give_back(self.request.remote_ip)

    def on_finish(self) -> None:
        super().on_finish()
        self._release()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._release()
