"""GET /api/v1/chat/config: the look and words of a site's widget, and whether a person can answer
now (opening hours, operators online). Public, so nothing secret."""

from __future__ import annotations

from typing import Any

from server import validation
from server.opening_hours import OpeningHoursService
from server.sites import public_config

from handlers.base import ApiHandler


class WidgetConfigHandler(ApiHandler):
    def initialize(self, hours: OpeningHoursService, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.hours = hours

    async def get(self) -> None:
        site_key = validation.site_key(self.query())
        site = await self.resolve_site(site_key)
        availability = await self.hours.availability(site)
        self.write_json({"success": True, "config": {**public_config(site), **availability.public()}})
