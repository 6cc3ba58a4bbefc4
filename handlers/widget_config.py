"""GET /api/v1/chat/config: the look and words of a site's widget. Public, so nothing secret."""

from __future__ import annotations

import re
from typing import Any

from server import validation
from server.sites import DEFAULT_SETTINGS
from server.store.models import Site

from handlers.base import ApiHandler

COLOR_RE = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def _text(value: Any, default: str, limit: int) -> str:
    return value.strip()[:limit] if isinstance(value, str) and value.strip() else default


def public_config(site: Site) -> dict[str, Any]:
    """Only the settings the widget shows, each checked: a bad value falls back to the default
    rather than reaching CSS (a colour) or the layout (a position) in customers' pages."""
    settings = site.settings
    color = settings.get("color")
    position = settings.get("position")
    lang = settings.get("lang")
    limit = settings.get("upload_max_bytes")
    return {
        "title": _text(settings.get("title"), DEFAULT_SETTINGS["title"], 80),
        "greeting": _text(settings.get("greeting"), DEFAULT_SETTINGS["greeting"], 500),
        "color": color if isinstance(color, str) and COLOR_RE.match(color) else DEFAULT_SETTINGS["color"],
        "position": position if position in ("left", "right") else "right",
        "lang": lang if isinstance(lang, str) and validation.LANG_RE.match(lang) else "en",
        # Lets the widget refuse a too-large image before uploading it.
        "upload_max_bytes": limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        else DEFAULT_SETTINGS["upload_max_bytes"],
    }


class WidgetConfigHandler(ApiHandler):
    async def get(self) -> None:
        site_key = validation.site_key(self.query())
        site = await self.sites.resolve(site_key, self.request.headers.get("Origin"))
        self.write_json({"success": True, "config": public_config(site)})
