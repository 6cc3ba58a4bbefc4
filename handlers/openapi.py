"""GET /api/v1/openapi.json: the API described by docs/openapi.json, served as it is in the repository."""

from __future__ import annotations

from pathlib import Path

from handlers.base import JsonHandler

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


class OpenApiHandler(JsonHandler):
    def initialize(self, document: bytes) -> None:  # type: ignore[override]
        super().initialize()
        self.document = document

    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=300")
        self.set_header("Access-Control-Allow-Origin", "*")  # public, for API explorers anywhere
        self.finish(self.document)
