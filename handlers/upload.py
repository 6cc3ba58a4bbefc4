"""POST /api/v1/chat/upload-image: one image as multipart form data, streamed to disk.

The widget sends site_key and session_id in the query string as well as in the form, so the site,
the session's rates, the block list and the upload limits are checked before any of the body is
read; the body then goes through a streaming parser into a temporary file, never into memory.
"""

from __future__ import annotations

from typing import Any

from server.errors import ParleyError, TooLarge
from server.sites import MAX_UPLOAD_SETTING
from server.uploads import FORM_OVERHEAD, FormSpool, readable_size
from server.visitor import Visitor

from handlers.base import ApiHandler
from handlers.widget_api import PublicUrlMixin

# Room for the largest per-site image limit plus the multipart framing.
UPLOAD_BODY_LIMIT = MAX_UPLOAD_SETTING + 1024 * 1024
# A refused upload's body is still read to its end and thrown away, up to this much in all and for
# this long: most clients read an answer only once they have sent their body, and closing on them
# early resets the connection before they read the JSON error. A client that sent
# `Expect: 100-continue` is answered at once instead (it sends no body unless told to go on).
REFUSED_BODY_READ_LIMIT = 4 * UPLOAD_BODY_LIMIT
REFUSED_BODY_SECONDS = 30.0


class UploadImageHandler(PublicUrlMixin, ApiHandler):
    max_body_bytes = UPLOAD_BODY_LIMIT

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self._spool: FormSpool | None = None
        self._admitted: Visitor | None = None
        self._holds_slot = False
        self._refusal: ParleyError | None = None
        self._refused_bytes = 0
        self._drop_limit = 0
        self._holds_discard = False

    async def prepare(self) -> None:
        try:
            await self._admit()
        except ParleyError as refusal:
            if not self._read_and_drop(refusal):
                raise
            # Answered in post(), once the body has been read and dropped.

    def _read_and_drop(self, refusal: ParleyError) -> bool:
        """Whether to read the refused body before answering (see REFUSED_BODY_READ_LIMIT)."""
        headers = self.request.headers
        declared = headers.get("Content-Length", "")
        if (headers.get("Expect", "").lower() == "100-continue"
                or (declared.isdigit() and int(declared) > UPLOAD_BODY_LIMIT)
                or not (declared.isdigit() or "chunked" in headers.get("Transfer-Encoding", "").lower())):
            return False  # told to wait, more than we would read anyway, or no body at all
        try:
            self.chat.uploads.discards.take(self.request.remote_ip)
        except ParleyError:
            return False  # enough bodies are being thrown away already: answer and close
        self._holds_discard = True
        self._refusal = refusal
        self._drop_limit = UPLOAD_BODY_LIMIT
        connection = self.request.connection
        connection.set_max_body_size(REFUSED_BODY_READ_LIMIT)  # type: ignore[union-attr]
        connection.set_body_timeout(REFUSED_BODY_SECONDS)  # type: ignore[union-attr]
        return True

    async def _admit(self) -> None:
        super().prepare()  # (a declared length over what any site allows never gets here: 413)
        content_type = self.request.headers.get("Content-Type", "")
        query = self.query()
        limit = MAX_UPLOAD_SETTING
        if "site_key" in query or "session_id" in query:
            self._admitted = await self.visitor(query)
            limit = await self.chat.admit_upload(self._admitted)
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
            raise TooLarge(f"Images can be at most {readable_size(limit)}.")
        spool = self.chat.uploads.spool(content_type, limit)  # 400 unless multipart with a boundary
        self.chat.uploads.slots.take(self.request.remote_ip)
        self._holds_slot = True
        self._spool = spool
        self.request.connection.set_max_body_size(REFUSED_BODY_READ_LIMIT)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        if self._refusal is not None:
            self._refused_bytes += len(chunk)
            if self._refused_bytes > self._drop_limit:
                # Enough thrown away: answer now and let Tornado close the connection.
                refusal = self._refusal
                self.send_error(refusal.status, exc_info=(type(refusal), refusal, None))
            return
        if self._spool is None:
            return
        try:
            self._spool.feed(chunk)  # the spool deletes its file when it refuses
        except ParleyError as refusal:
            self._refusal = refusal
            self._drop_limit = REFUSED_BODY_READ_LIMIT - UPLOAD_BODY_LIMIT

    async def post(self) -> None:
        if self._finished:
            return
        if self._refusal is not None:
            raise self._refusal
        if self._spool is None:
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
        if self._holds_slot:
            self._holds_slot = False
            self.chat.uploads.slots.give_back(self.request.remote_ip)
        if self._holds_discard:
            self._holds_discard = False
            self.chat.uploads.discards.give_back(self.request.remote_ip)

    def on_finish(self) -> None:
        super().on_finish()
        self._release()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._release()
