"""Is the configured model reachable, is the key accepted, is the model offered? Asked once at start
and by `python -m server ai check`, so a wrong key, model or URL is a clear sentence for whoever
runs Parley, not a surprise on the first visitor's question.

First the models list (free, and it names the models on offer); when the list does not settle it
(no such endpoint, or the model not listed under that name), one completion of one token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from server.ai.settings import ModelConfig

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 10.0
SHOWN_MODELS = 8
BODY_CHARS = 200


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


def describe_model(config: ModelConfig | None) -> str:
    """What the start banner says about who answers."""
    return "offline answerer" if config is None else f"{config.model} at {config.base_url}"


def _scrubbed(config: ModelConfig, response: httpx.Response) -> str:
    """The start of an error body, without the key (some upstreams echo it back)."""
    text = " ".join(response.text.split())[:BODY_CHARS]
    return text.replace(config.api_key, "***") if config.api_key else text


def _refused(config: ModelConfig, response: httpx.Response) -> CheckResult:
    key = "no API key was given" if not config.api_key else "the API key was refused"
    return CheckResult(False, f"{key} (HTTP {response.status_code} from {config.base_url}): "
                              f"{_scrubbed(config, response)}")


def _listed_models(response: httpx.Response) -> list[str] | None:
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, list):
        return None
    return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]


async def check_model(config: ModelConfig, *, client: httpx.AsyncClient | None = None,
                      timeout: float = CHECK_TIMEOUT) -> CheckResult:
    """One models list and, if needed, one one-token completion; never raises for a network error."""
    owned = client is None
    client = client or httpx.AsyncClient(follow_redirects=False)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    base = config.base_url.rstrip("/")
    try:
        listed: list[str] | None = None
        response = await client.get(f"{base}/models", headers=headers, timeout=timeout)
        if response.status_code in (401, 403):
            return _refused(config, response)
        if response.status_code == 200:
            listed = _listed_models(response)
            if listed is not None and config.model in listed:
                return CheckResult(True, f"{config.model} is offered by {config.base_url}")
        return await _complete_one_token(client, config, headers, listed, timeout)
    except httpx.HTTPError as exc:
        return CheckResult(False, f"cannot reach {config.base_url}: {type(exc).__name__} {exc}".strip())
    finally:
        if owned:
            await client.aclose()


async def _complete_one_token(client: httpx.AsyncClient, config: ModelConfig, headers: dict[str, str],
                              listed: list[str] | None, timeout: float) -> CheckResult:
    body: dict[str, Any] = {"model": config.model, "max_tokens": 1, "stream": False,
                            "messages": [{"role": "user", "content": "Say OK."}]}
    response = await client.post(f"{config.base_url.rstrip('/')}/chat/completions", json=body,
                                 headers=headers, timeout=timeout)
    if response.status_code in (401, 403):
        return _refused(config, response)
    if response.status_code == 200:
        try:
            json.loads(response.text)["choices"]
        except (ValueError, KeyError, TypeError):
            return CheckResult(False, f"{config.base_url} answered, but not as an OpenAI-compatible "
                                      "API (is the base URL right? it usually ends in /v1)")
        return CheckResult(True, f"{config.model} at {config.base_url} answered a one-token completion")
    if listed is not None and config.model not in listed:
        offered = ", ".join(listed[:SHOWN_MODELS]) or "none"
        return CheckResult(False, f"the model {config.model!r} is not offered (it offers: {offered}): "
                                  f"HTTP {response.status_code}: {_scrubbed(config, response)}")
    # A wrong model name, base URL or key (some proxies answer a bad key with 400): the body says.
    return CheckResult(False, f"{config.base_url} refused a one-token completion of {config.model!r}: "
                              f"HTTP {response.status_code}: {_scrubbed(config, response)}")


async def announce_check(config: ModelConfig) -> CheckResult:
    """The check at start: one line under the banner, and a warning in the log when it fails."""
    result = await check_model(config)
    if result.ok:
        print(f"  AI check:      ok, {result.message}", flush=True)
    else:
        print(f"WARNING: the AI model does not work: {result.message}. Visitors will get an error "
              "and an offer of a person until this is fixed (check again: python -m server ai check).",
              flush=True)
        log.warning("AI model check failed: %s", result.message)
    return result
