"""POST /api/v1/chat/upload-image: one image as multipart form data."""

from __future__ import annotations

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from server.errors import InvalidRequest
from server.sites import MAX_UPLOAD_SETTING

from handlers.base import ApiHandler
from handlers.widget_api import PublicUrlMixin

# Room for the largest per-site image limit plus the multipart framing.
UPLOAD_BODY_LIMIT = MAX_UPLOAD_SETTING + 1024 * 1024


class UploadImageHandler(PublicUrlMixin, ApiHandler):
    max_body_bytes = UPLOAD_BODY_LIMIT

    async def post(self) -> None:
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise InvalidRequest("Send the image as multipart/form-data with the field 'image'.")
        arguments: dict[str, list[bytes]] = {}
        files: dict[str, list[HTTPFile]] = {}
        try:
            parse_body_arguments(content_type, self.body, arguments, files)
        except HTTPInputError as exc:  # no boundary, a broken part
            raise InvalidRequest(f"The multipart body cannot be read ({exc}).") from None
        fields = {name: values[-1].decode("utf-8", "replace") for name, values in arguments.items()}
        visitor = await self.visitor(fields)
        images = files.get("image")
        if not images:
            raise InvalidRequest("The multipart field 'image' is missing.")
        message = await self.chat.upload_image(visitor, images[0].body)
        self.write_json({"success": True, "url": self.chat.image_url(message, self.base_url)})
