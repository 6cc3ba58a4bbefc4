"""A site's AI settings from the dashboard (the key write-only) and Test connection: one short answer
streamed from the site's model, timed to its first token, or the upstream's own error."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

import httpx
import httpx_sse

from server.ai.settings import (
    ModelConfig,
    ai_settings,
    global_model_config,
    mask_key,
    model_limits,
    site_model_config,
    updated_ai_settings,
)
from server.audit import Actor, AuditLog
from server.config import Config
from server.errors import InvalidRequest
from server.sites import SiteService
from server.store.models import Site

TEST_PROMPT = "Reply with one short friendly sentence to say the connection works."
TEST_TIMEOUT = 15.0
TEST_MAX_CHARS = 400
ERROR_BODY_CHARS = 300


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    message: str
    answer: str = ""
    first_token_ms: int | None = None
    total_ms: int | None = None


def form_values(site: Site) -> dict[str, Any]:
    """What the AI page shows: every setting, the key only masked."""
    settings = ai_settings(site)
    caps = settings.get("caps") or {}
    return {
        "base_url": settings.get("base_url", ""), "model": settings.get("model", ""),
        "api_key_masked": mask_key(settings.get("api_key")) or "",
        "system_prompt": settings.get("system_prompt", ""),
        "temperature": "" if settings.get("temperature") is None else str(settings["temperature"]),
        "max_tokens": str(settings.get("max_tokens") or ""),
        "handoff_phrases": "\n".join(settings.get("handoff_phrases") or []),
        "handoff_when_unsure": bool(site.setting("handoff_when_unsure", False) if
                                    settings.get("handoff_when_unsure") is None else settings["handoff_when_unsure"]),
        "redact_pii": bool(settings.get("redact_pii", False)),
        **{cap: "" if caps.get(cap) is None else str(caps[cap])
           for cap in ("replies_per_session_hour", "replies_per_site_day", "max_input_chars")},
    }


def _number(raw: str, label: str, kind: type) -> Any:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidRequest(f"{label} is a number.") from None


def parse_ai_form(form: Mapping[str, str]) -> dict[str, Any]:
    """The changes for updated_ai_settings. An empty key field keeps the stored key; the
    'remove key' box removes it."""
    changes: dict[str, Any] = {
        "base_url": form.get("base_url", "").strip()[:500],
        "model": form.get("model", "").strip()[:200],
        "system_prompt": form.get("system_prompt", "").strip()[:8000],
        "temperature": _number(form.get("temperature", ""), "The temperature", float),
        "max_tokens": _number(form.get("max_tokens", ""), "Max tokens", int),
        "handoff_phrases": [p.strip()[:200] for p in form.get("handoff_phrases", "").splitlines()[:50]
                            if p.strip()] or None,
        "handoff_when_unsure": form.get("handoff_when_unsure") == "on",
        "redact_pii": form.get("redact_pii") == "on",
        # An empty cap field is the server's default ("", which updated_ai_settings removes), never
        # "no limit" (None): saving the page must not lift a cap nobody touched.
        "caps": {cap: _number(form.get(cap, ""), cap.replace("_", " "), int) if form.get(cap, "").strip()
                 else "" for cap in ("replies_per_session_hour", "replies_per_site_day", "max_input_chars")},
    }
    key = form.get("api_key", "").strip()
    if form.get("remove_key") == "on":
        changes["api_key"] = None
    elif key:
        if len(key) > 500 or any(c.isspace() for c in key):
            raise InvalidRequest("The key is one word of at most 500 characters.")
        changes["api_key"] = key
    return changes


class SiteAI:
    def __init__(self, sites: SiteService, config: Config, audit: AuditLog) -> None:
        self.sites = sites
        self.config = config
        self.audit = audit

    async def save(self, site: Site, form: Mapping[str, str], actor: Actor) -> Site:
        changes = parse_ai_form(form)
        current = ai_settings(site)
        updated = updated_ai_settings(current, changes)
        changed = sorted(k for k in set(current) | set(updated) if current.get(k) != updated.get(k))
        site = await self.sites.update_settings(site.id, {"ai": updated})
        if changed:  # names only: the key itself never reaches the audit log
            await self.audit.record(actor, "site.ai_settings", site_id=site.id, target=site.name,
                                    changed=",".join(changed))
        return site

    def model_for(self, site: Site) -> ModelConfig | None:
        return site_model_config(site, global_model_config(self.config), model_limits(self.config))

    async def test_connection(self, site: Site, *, client: httpx.AsyncClient | None = None) -> ConnectionResult:
        config = self.model_for(site)
        if config is None:
            return ConnectionResult(True, "This site uses the offline answerer: nothing to connect to.")
        owned = client is None
        client = client or httpx.AsyncClient(follow_redirects=False)
        try:
            async with asyncio.timeout(TEST_TIMEOUT):
                return await self._stream_once(client, config)
        except TimeoutError:
            return ConnectionResult(False, f"No answer within {TEST_TIMEOUT:g} s from {config.base_url}.")
        except httpx.HTTPError as exc:
            return ConnectionResult(False, f"Could not reach {config.base_url}: {type(exc).__name__} "
                                           f"{self._scrub(config, str(exc))}".strip())
        finally:
            if owned:
                await client.aclose()

    @staticmethod
    def _scrub(config: ModelConfig, text: str) -> str:
        return text.replace(config.api_key, "…") if config.api_key else text

    async def _stream_once(self, client: httpx.AsyncClient, config: ModelConfig) -> ConnectionResult:
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        body = {"model": config.model, "stream": True, "max_tokens": 40,
                "messages": [{"role": "user", "content": TEST_PROMPT}]}
        started = time.monotonic()
        first: float | None = None
        text = ""
        async with httpx_sse.aconnect_sse(client, "POST", f"{config.base_url}/chat/completions",
                                          json=body, headers=headers) as source:
            response = source.response
            if response.status_code != 200:
                raw = (await response.aread()).decode("utf-8", "replace")[:ERROR_BODY_CHARS]
                return ConnectionResult(False, f"{config.base_url} answered {response.status_code}: "
                                               f"{self._scrub(config, raw)}")
            async for event in source.aiter_sse():
                if event.data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(event.data)
                except json.JSONDecodeError:
                    continue
                if isinstance(chunk, dict) and chunk.get("error"):
                    return ConnectionResult(False, "The model sent an error: "
                                            + self._scrub(config, json.dumps(chunk["error"])[:ERROR_BODY_CHARS]))
                for choice in (chunk.get("choices") or []) if isinstance(chunk, dict) else []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece and first is None:
                        first = time.monotonic()
                    text += piece
                if len(text) >= TEST_MAX_CHARS:
                    break
        total = time.monotonic() - started
        if first is None:
            return ConnectionResult(False, f"{config.model} at {config.base_url} answered with no text.")
        ttft = round((first - started) * 1000)
        return ConnectionResult(True, f"{config.model} answered: first token after {ttft} ms.",
                                answer=text[:TEST_MAX_CHARS], first_token_ms=ttft, total_ms=round(total * 1000))
