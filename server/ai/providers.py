"""Which provider answers for a site: the global one, or a site's own model, cached per config.

All OpenAI-compatible providers share one httpx client (one connection pool), so evicting a
cached provider never cuts a stream in progress.
"""

from __future__ import annotations

import collections
import http.cookiejar
import urllib.request
from typing import Any

import httpx

from server.ai.base import Provider
from server.ai.openai_compat import OpenAICompatible
from server.ai.settings import ModelConfig, site_model_config
from server.ai.upstream import UpstreamTransport
from server.store.models import Site


# Idle upstream connections kept for the next question (over all upstreams). Each spares a
# question the TCP (and TLS) handshake before its first token; the transport looks only at idle
# connections when a request starts or ends, so keeping more costs sockets, not CPU.
KEEP_IDLE_CONNECTIONS = 32


class _KeepNoCookies(http.cookiejar.CookieJar):
    """The client serves every site: a cookie one site's model set (a load balancer's, say) must
    not go out with another site's question. Also spares parsing them on every answer."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass


def upstream_client() -> httpx.AsyncClient:
    """The one client for every model: our transport, or httpx's own when the environment names
    a proxy (HTTPS_PROXY and the like), which httpx's transport knows how to go through."""
    if urllib.request.getproxies():
        # httpcore's pool walks all its connections per request: keep few idle (as before).
        return httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=8),
                                 follow_redirects=False, cookies=_KeepNoCookies())
    return httpx.AsyncClient(transport=UpstreamTransport(max_idle=KEEP_IDLE_CONNECTIONS),
                             follow_redirects=False, cookies=_KeepNoCookies())


class ProviderRegistry:
    def __init__(self, offline: Provider, default_config: ModelConfig | None, *,
                 limits: dict[str, Any] | None = None, max_cached: int = 256) -> None:
        self.offline = offline
        self.default_config = default_config
        self.limits = limits  # the server's timeouts, for a site's own model when there is no default
        self.max_cached = max_cached
        self.client = upstream_client()
        self._cache: collections.OrderedDict[ModelConfig, OpenAICompatible] = collections.OrderedDict()
        self.default: Provider = self._model(default_config) if default_config else offline

    def _model(self, config: ModelConfig) -> OpenAICompatible:
        provider = self._cache.pop(config, None) or OpenAICompatible(config, self.client)
        self._cache[config] = provider
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return provider

    def for_site(self, site: Site) -> Provider | None:
        """The AIEngine's `provider_for_site` hook; None: the engine's default provider."""
        config = site_model_config(site, self.default_config, self.limits)
        if config == self.default_config:
            return None
        if config is None:
            return self.offline
        return self._model(config)

    async def close(self) -> None:
        await self.client.aclose()
