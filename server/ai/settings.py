"""AI settings: the global model config (flags / env) and a site's overrides in settings["ai"].

A site's `settings["ai"]` may hold: base_url, api_key, model, temperature, max_tokens,
system_prompt, redact_pii, caps {replies_per_session_hour, replies_per_site_day, max_input_chars},
handoff_phrases, handoff_when_unsure. Anything missing falls back to the global config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from server.errors import InvalidRequest
from server.store.models import Site

MODEL_KEYS = ("base_url", "api_key", "model", "temperature", "max_tokens", "system_prompt")
SITE_KEYS = (*MODEL_KEYS, "redact_pii", "caps", "handoff_phrases", "handoff_when_unsure")
CAP_KEYS = ("replies_per_session_hour", "replies_per_site_day", "max_input_chars")


@dataclass(frozen=True)
class ModelConfig:
    """Everything one OpenAI-compatible provider needs. Frozen and hashable: it keys the cache."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in a repr, so never in a log
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None
    connect_timeout: float = 5.0
    first_token_timeout: float = 30.0
    idle_timeout: float = 30.0
    attempts: int = 3
    backoff: float = 0.5
    # The first token, across every attempt and backoff, arrives within this or not at all.
    deadline: float = 20.0
    # A model that never stops (a loop, a broken server) is cut after this long.
    max_answer_seconds: float = 120.0


def ai_settings(site: Site) -> dict[str, Any]:
    value = site.setting("ai", None)
    return value if isinstance(value, dict) else {}


def ai_setting(site: Site, name: str, default: Any) -> Any:
    """settings["ai"][name], else the older top-level settings[name], else `default`."""
    value = ai_settings(site).get(name)
    return value if value is not None else site.setting(name, default)


def site_model_config(site: Site, default: ModelConfig | None,
                      limits: dict[str, Any] | None = None) -> ModelConfig | None:
    """The site's model: the global one with the site's overrides; None means the offline answerer.
    `limits` (model_limits: the server's timeouts and tries) for a site's own model on a server
    with none of its own."""
    overrides = {k: v for k, v in ai_settings(site).items() if k in MODEL_KEYS and v not in (None, "")}
    if not overrides:
        return default
    if default is None:
        if "base_url" not in overrides or "model" not in overrides:
            return None
        return ModelConfig(**(limits or {}), **overrides)
    if overrides.get("base_url", default.base_url) != default.base_url and "api_key" not in overrides:
        # The server's key goes to the server's model only: a site pointed elsewhere brings its own.
        return replace(default, **overrides, api_key=None)
    return replace(default, **overrides)


def check_base_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"'{url}' is not an http(s) URL such as https://api.openai.com/v1.")
    return url.strip().rstrip("/")


def mask_key(key: str | None) -> str | None:
    """`sk-…wxyz`: enough to tell keys apart, never enough to use one."""
    if not key:
        return None
    return "…" + key[-4:] if len(key) > 12 else "…"


def masked(settings: dict[str, Any]) -> dict[str, Any]:
    shown = dict(settings)
    if "api_key" in shown:
        shown["api_key"] = mask_key(shown["api_key"])
    return shown


def global_model_config(config: Any) -> ModelConfig | None:
    """The model from flags / PARLEY_AI_* (a server.config.Config); None means offline."""
    if not config.ai_base_url:
        return None
    if not config.ai_model:
        raise SystemExit("PARLEY_AI_MODEL (--ai-model) is required with PARLEY_AI_BASE_URL.")
    return ModelConfig(
        base_url=check_base_url(config.ai_base_url),
        model=config.ai_model,
        api_key=config.ai_api_key or None,
        temperature=config.ai_temperature,
        max_tokens=config.ai_max_tokens,
        system_prompt=config.ai_system_prompt or None,
        **model_limits(config),
    )


def model_limits(config: Any) -> dict[str, Any]:
    """The server's timeouts and tries (a server.config.Config), for every model it talks to."""
    return {"connect_timeout": config.ai_connect_timeout, "first_token_timeout": config.ai_first_token_timeout,
            "idle_timeout": config.ai_idle_timeout, "attempts": config.ai_attempts, "backoff": config.ai_backoff,
            "deadline": config.ai_deadline, "max_answer_seconds": config.ai_max_answer_seconds}


def updated_ai_settings(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A site's settings["ai"] with `changes` applied and checked; "" or None in `changes` removes
    a key (falls back to the global config). `caps` changes merge into the current caps."""
    result = dict(current)
    for name, value in changes.items():
        if name not in SITE_KEYS:
            raise InvalidRequest(f"Unknown AI setting '{name}'.")
        if name == "caps":
            caps = {cap: limit for cap, limit in {**(result.get("caps") or {}), **value}.items()
                    if limit != ""}  # "": back to the default
            for cap, limit in caps.items():
                if cap not in CAP_KEYS:
                    raise InvalidRequest(f"Unknown cap '{cap}'.")
                if limit is not None and (not isinstance(limit, int) or limit < 0):
                    raise InvalidRequest(f"The cap {cap} is a whole number, 0 or more.")
            result["caps"] = caps
            continue
        if value is None or value == "":
            result.pop(name, None)
            continue
        if name == "base_url":
            value = check_base_url(value)
            if value != current.get("base_url") and not changes.get("api_key"):
                # The stored key was given for the old address: it is not sent to a new one.
                result.pop("api_key", None)
        elif name == "temperature" and not 0 <= float(value) <= 2:
            raise InvalidRequest("The temperature is between 0 and 2.")
        elif name == "max_tokens" and int(value) < 1:
            raise InvalidRequest("max_tokens is at least 1.")
        result[name] = value
    return result
