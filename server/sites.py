"""Sites: creating them, finding them by key, and deciding which origins may embed them."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any, Callable
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


# How long a process answers from the site it last read before reading it again. A change made
# through this process's SiteService counts at once here; one made by another process (another
# server process, the CLI) counts here within this many seconds.
SITE_CACHE_SECONDS = 2.0
# Sites remembered at once; a bound on what a flood of keys can pin.
CACHED_SITES = 1024


class SiteService:
    """Sites by key, for every widget request. Each request of a busy site reading the store again
    cost a store hop per request, and thousands of held requests each kept their own copy; so a site
    is read at most once per SITE_CACHE_SECONDS per process and requests share the one Site object."""

    def __init__(self, store: Store, *, cache_seconds: float = SITE_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cached: dict[str, tuple[float, Site]] = {}  # site_key -> (read at, site)
        self._changes = 0  # counts this process's changes: a read begun before one is not kept
        # site_key -> the read under way: requests that miss meanwhile wait for it rather than
        # each reading (at 100 answers streaming at once, ~19 read the same site per expiry).
        self._reading: dict[str, asyncio.Future[Site]] = {}

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
        """The enabled site with this key, as read within the last SITE_CACHE_SECONDS."""
        now = self.clock()
        cached = self._cached.get(site_key)
        if cached is not None and now - cached[0] < self.cache_seconds:
            site = cached[1]
        else:
            reading = self._reading.get(site_key)
            if reading is None:
                reading = self._reading[site_key] = asyncio.ensure_future(self._read(site_key, now))
                reading.add_done_callback(lambda done: self._read_ended(site_key, done))
            site = await asyncio.shield(reading)  # one request leaving does not stop the others' read
        if not site.enabled:
            raise UnknownSite("No site has this site_key.")
        return site

    async def _read(self, site_key: str, now: float) -> Site:
        changes = self._changes
        site = await self.store.get_site_by_key(site_key)
        if site is None:  # unknown keys are not remembered: a flood of them pins nothing
            self._cached.pop(site_key, None)
            raise UnknownSite("No site has this site_key.")
        cached = self._cached.get(site_key)
        if cached is not None and cached[1] == site:
            site = cached[1]  # unchanged: requests keep sharing the one object
        if changes == self._changes:  # no change of ours landed while we read
            self._remember(site_key, now, site)
        return site

    def _read_ended(self, site_key: str, read: asyncio.Future[Site]) -> None:
        if self._reading.get(site_key) is read:
            del self._reading[site_key]
        if not read.cancelled():
            read.exception()  # seen here, in case every request waiting for it has left

    def _remember(self, site_key: str, now: float, site: Site) -> None:
        self._cached.pop(site_key, None)
        if len(self._cached) >= CACHED_SITES:
            self._cached.pop(next(iter(self._cached)))
        self._cached[site_key] = (now, site)

    def forget(self, site_id: int) -> None:
        """The site changed: the next request reads it again (under its old key and any new one)."""
        self._changes += 1
        self._reading.clear()  # a request from now on reads again, not what was read before
        for key in [key for key, (_, site) in self._cached.items() if site.id == site_id]:
            del self._cached[key]

    async def update_settings(self, site_id: int, changes: dict[str, Any]) -> Site:
        """Set some of the site's settings (the rest are kept); counts at once in this process."""
        try:
            return await self.store.update_site_settings(site_id, changes)
        finally:
            self.forget(site_id)

    async def update(self, site_id: int, *, name: str | None = None,
                     allowed_origins: list[str] | None = None, site_key: str | None = None) -> Site:
        """Rename the site, replace its origins or give it a new key; counts at once here."""
        try:
            return await self.store.update_site(site_id, name=name, allowed_origins=allowed_origins,
                                                site_key=site_key)
        finally:
            self.forget(site_id)

    async def get_for_admin(self, site_key: str) -> Site:
        """The site, disabled or not, as stored now (an admin edits and re-enables a disabled one)."""
        site = await self.store.get_site_by_key(site_key)
        if site is None:
            raise UnknownSite("No site has this site_key.")
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
            if not origin:  # curl, a server-side script: no browser said where it runs
                raise OriginNotAllowed("This site allows chat only from its own origins, and the "
                                       "request sent no Origin header.")
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
