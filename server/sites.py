"""Sites: creating them, finding them by key, and deciding which origins may embed them."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from server.errors import InvalidRequest, OriginNotAllowed, UnknownSite
from server.store.base import Store
from server.store.models import Site
from server.validation import LANG_RE

DEFAULT_SETTINGS: dict[str, Any] = {
    "title": "Chat with us",
    "greeting": "Hi! Ask me anything about our shop.",
    "color": "#1f6feb",
    "position": "right",
    "lang": "en",
    "upload_max_bytes": 5 * 1024 * 1024,
    "handoff_when_unsure": False,
    # Keep the query and fragment of the pages visitors chat from (they can hold tokens and emails).
    "full_page_urls": False,
}


def new_site_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


def normalise_origin(raw: str) -> str:
    """`https://Shop.example.com/path` -> `https://shop.example.com`; anything else is refused."""
    refusal = InvalidRequest(f"'{raw[:200]}' is not an http(s) origin such as https://shop.example.com.")
    try:
        parts = urlsplit(raw.strip())
        explicit_port = parts.port  # raises ValueError when out of range
    except ValueError:
        raise refusal from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refusal
    host = parts.hostname.lower()
    default_port = {"http": 80, "https": 443}[parts.scheme]
    port = f":{explicit_port}" if explicit_port and explicit_port != default_port else ""
    return f"{parts.scheme}://{host}{port}"


# Sites remembered for sharing (see SiteService.get); a bound on what a flood of keys can pin.
SHARED_SITES = 1024


class SiteService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._shared: dict[int, Site] = {}

    async def create(self, name: str, origins: list[str] | None = None,
                     settings: dict[str, Any] | None = None) -> Site:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("A site name is 1 to 200 characters.")
        allowed = [normalise_origin(o) for o in (origins or [])]
        return await self.store.create_site(
            new_site_key(), name, allowed, {**DEFAULT_SETTINGS, **(settings or {})}
        )

    async def list(self) -> list[Site]:
        return await self.store.list_sites()

    async def get(self, site_key: str) -> Site:
        site = await self.store.get_site_by_key(site_key)
        if site is None or not site.enabled:
            raise UnknownSite("No site has this site_key.")
        return self._shared_copy(site)

    async def get_for_admin(self, site_key: str) -> Site:
        """The site, disabled or not (an admin edits and re-enables a disabled one)."""
        site = await self.store.get_site_by_key(site_key)
        if site is None:
            raise UnknownSite("No site has this site_key.")
        return site

    def _shared_copy(self, site: Site) -> Site:
        """The one Site object equal to `site` that earlier requests got, else `site` itself.
        Every request still reads the store (a change anywhere counts at once), but thousands of
        held requests of one site then keep one Site (about 1.5 KB with its settings), not one each."""
        shared = self._shared.get(site.id)
        if shared == site:
            return shared
        if shared is None and len(self._shared) >= SHARED_SITES:
            self._shared.pop(next(iter(self._shared)))
        self._shared[site.id] = site
        return site

    @staticmethod
    def origin_allowed(site: Site, origin: str | None) -> bool:
        """A site with no origin list may be embedded anywhere; otherwise the origin must be listed."""
        if not site.allowed_origins:
            return True
        if not origin:
            return False
        try:
            return normalise_origin(origin) in site.allowed_origins
        except InvalidRequest:
            return False

    async def any_allows(self, origin: str) -> bool:
        """Whether some enabled site may be embedded on `origin` (a preflight that names no site)."""
        return any(site.enabled and self.origin_allowed(site, origin) for site in await self.list())

    async def resolve(self, site_key: str, origin: str | None) -> Site:
        site = await self.get(site_key)
        if not self.origin_allowed(site, origin):
            raise OriginNotAllowed("This site does not allow chat from this origin.")
        return site


COLOR_RE = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
# The largest image a site may allow; the upload endpoint reads this plus room for the form.
MAX_UPLOAD_SETTING = 20 * 1024 * 1024


def _text(value: Any, default: str, limit: int) -> str:
    return value.strip()[:limit] if isinstance(value, str) and value.strip() else default


def upload_limit(site: Site) -> int:
    """The site's largest image in bytes: its setting if sane, capped by what the endpoint reads."""
    limit = site.settings.get("upload_max_bytes")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return min(limit, MAX_UPLOAD_SETTING)
    return int(DEFAULT_SETTINGS["upload_max_bytes"])


def public_config(site: Site) -> dict[str, Any]:
    """Only the settings the widget shows, each checked: a bad value falls back to the default
    rather than reaching CSS (a colour) or the layout (a position) in customers' pages."""
    settings = site.settings
    color = settings.get("color")
    position = settings.get("position")
    lang = settings.get("lang")
    return {
        "title": _text(settings.get("title"), DEFAULT_SETTINGS["title"], 80),
        "greeting": _text(settings.get("greeting"), DEFAULT_SETTINGS["greeting"], 500),
        "color": color if isinstance(color, str) and COLOR_RE.match(color) else DEFAULT_SETTINGS["color"],
        "position": position if position in ("left", "right") else "right",
        "lang": lang if isinstance(lang, str) and LANG_RE.match(lang) else "en",
        # Lets the widget refuse a too-large image before uploading it.
        "upload_max_bytes": upload_limit(site),
        "full_page_urls": keeps_full_page_urls(site),
    }


def embed_snippet(site: Site, base_url: str) -> str:
    """The one script tag a site's pages embed."""
    return (f'<script src="{base_url.rstrip("/")}/widget/widget.js" data-site-key="{site.site_key}"'
            ' async></script>')


def keeps_full_page_urls(site: Site) -> bool:
    return site.settings.get("full_page_urls") is True


def kept_page_url(site: Site, raw: str | None) -> str | None:
    """The page a visitor chats from, as stored and shown to the model: origin and path, or the
    whole URL where the site opted in. Whatever the widget sent, as the server is the one to trust."""
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise InvalidRequest("'page_url' is not a URL.") from None
    if keeps_full_page_urls(site):
        return raw
    host = parts.netloc.rpartition("@")[2]  # never a user:password
    return urlunsplit((parts.scheme, host, parts.path, "", "")) or None
