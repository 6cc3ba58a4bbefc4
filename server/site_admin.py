"""What a site's admin changes from the dashboard: its name, origins and widget settings, and its key.
Every value is checked here (the widget reads them in customers' pages) and every change audited."""

from __future__ import annotations

from typing import Any, Mapping

from server.audit import Actor, AuditLog
from server.errors import InvalidRequest
from server.privacy import MAX_RETENTION_DAYS
from server.sites import COLOR_RE, MAX_UPLOAD_SETTING, SiteService, new_site_key, normalise_origin
from server.store.models import Site
from server.validation import LANG_RE

MEGABYTE = 1024 * 1024


def _text(form: Mapping[str, str], name: str, label: str, limit: int) -> str:
    value = form.get(name, "").strip()
    if not value or len(value) > limit:
        raise InvalidRequest(f"{label} is 1 to {limit} characters.")
    return value


def _whole(form: Mapping[str, str], name: str, label: str, low: int, high: int) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{label} is a whole number.") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{label} is between {low} and {high}.")
    return value


def parse_site_form(form: Mapping[str, str]) -> tuple[str, list[str], dict[str, Any]]:
    """(name, allowed origins, settings changes) from the site page's form, or InvalidRequest."""
    name = _text(form, "name", "A site name", 200)
    origins = [normalise_origin(line) for line in form.get("origins", "").splitlines()[:100] if line.strip()]
    color = form.get("color", "").strip()
    if not COLOR_RE.match(color):
        raise InvalidRequest("The colour is a hex colour such as #1f6feb.")
    position = form.get("position", "")
    if position not in ("left", "right"):
        raise InvalidRequest("The position is left or right.")
    lang = form.get("lang", "").strip()
    if not LANG_RE.match(lang):
        raise InvalidRequest("The language is a code such as en or pt-BR.")
    upload_mb = _whole(form, "upload_mb", "The upload limit (MB)", 1, MAX_UPLOAD_SETTING // MEGABYTE)
    settings: dict[str, Any] = {
        "title": _text(form, "title", "The widget title", 80),
        "greeting": _text(form, "greeting", "The greeting", 500),
        "color": color, "position": position, "lang": lang,
        "retention_days": _whole(form, "retention_days", "Retention (days)", 1, MAX_RETENTION_DAYS),
    }
    if upload_mb is not None:
        settings["upload_max_bytes"] = upload_mb * MEGABYTE
    return name, origins, settings


class SiteAdmin:
    def __init__(self, sites: SiteService, audit: AuditLog) -> None:
        self.sites = sites
        self.audit = audit

    async def create(self, name: str, actor: Actor) -> Site:
        site = await self.sites.create(name)
        await self.audit.record(actor, "site.create", site_id=site.id, target=site.name)
        return site

    async def edit(self, site: Site, form: Mapping[str, str], actor: Actor) -> Site:
        name, origins, settings = parse_site_form(form)
        changed = sorted(k for k, v in settings.items() if site.settings.get(k) != v)
        if name != site.name:
            changed.append("name")
        if origins != site.allowed_origins:
            changed.append("allowed_origins")
        await self.sites.update(site.id, name=name, allowed_origins=origins)
        updated = await self.sites.update_settings(site.id, settings)
        await self._audit_settings(updated, changed, actor)
        return updated

    async def set_privacy(self, site: Site, actor: Actor, *, full_page_urls: bool | None = None,
                          retention_days: int | None = None) -> Site:
        """What the command line changes; None leaves a setting as it is, 0 days keeps conversations."""
        settings: dict[str, Any] = {}
        if full_page_urls is not None:
            settings["full_page_urls"] = full_page_urls
        if retention_days is not None:
            if not 0 <= retention_days <= MAX_RETENTION_DAYS:
                raise InvalidRequest(f"Retention (days) is between 0 (keep) and {MAX_RETENTION_DAYS}.")
            settings["retention_days"] = retention_days or None
        changed = sorted(k for k, v in settings.items() if site.settings.get(k) != v)
        if not changed:
            return site
        updated = await self.sites.update_settings(site.id, settings)
        await self._audit_settings(updated, changed, actor)
        return updated

    async def _audit_settings(self, site: Site, changed: list[str], actor: Actor) -> None:
        if changed:
            await self.audit.record(actor, "site.settings", site_id=site.id, target=site.name,
                                    changed=",".join(changed))

    async def rotate_key(self, site: Site, actor: Actor) -> Site:
        updated = await self.sites.update(site.id, site_key=new_site_key())
        await self.audit.record(actor, "site.rotate_key", site_id=site.id, target=site.name)
        return updated
