"""GET /api/v1/chat/config: the look and words of a site's widget. Public, so nothing secret."""

from __future__ import annotations

from server import validation
from server.sites import public_config

from handlers.base import ApiHandler


class WidgetConfigHandler(ApiHandler):
    async def get(self) -> None:
        site_key = validation.site_key(self.query())
        site = await self.resolve_site(site_key)
        self.write_json({"success": True, "config": public_config(site)})
