"""Schemathesis fuzzes every operation of docs/openapi.json, with data that fits the document and
data that does not: no 5xx, no response outside the document, no stack trace, and every malformed
request refused. A bounded number of examples, so it fits in scripts/test."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Iterator

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from handlers.openapi import OPENAPI_PATH
from server.chat import Limits
from server.ratelimit import Rate
from server.validation import NUMBER_RE, SESSION_ID_RE, SITE_KEY_RE
from tests.harness import Parley, start_parley

EXAMPLES_PER_OPERATION = 25  # per generation mode; raise it locally to dig deeper

CONFIG = SchemathesisConfig.from_dict({
    "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "database": "none",
                   "deterministic": True},
})
# The dashboard's operations need a signed-in operator and an XSRF token; its own tests cover them.
schema = schemathesis.openapi.from_dict(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")),
                                        config=CONFIG).exclude(tag="dashboard")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]
# Generous limits: the fuzzer writes from one address and should reach past the rate limiter.
GENEROUS = Limits(messages_per_session=Rate(10_000, 10_000), writes_per_ip=Rate(100_000, 100_000),
                  uploads_per_session=Rate(10_000, 10_000))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parley]:
    """A Parley in its own thread and event loop: schemathesis calls it synchronously."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        holder["stop"] = lambda: holder["loop"].call_soon_threadsafe(stop.set)
        holder["loop"] = asyncio.get_running_loop()
        async for parley in start_parley(tmp_path_factory.mktemp("fuzz"), limits=GENEROUS):
            holder["parley"] = parley
            started.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="fuzz-server", daemon=True)
    thread.start()
    assert started.wait(30), "the fuzz server did not start"
    try:
        yield holder["parley"]
    finally:
        holder["stop"]()
        thread.join(30)


def with_real_site(case: Any, parley: Parley) -> None:
    """A well-formed site_key the fuzzer made up names no site; swap in a real one so the request
    reaches past the site lookup. Only well-formed values are swapped, so a negative case stays one.
    Held reads are kept short."""
    for part in (case.query, case.body):
        if not isinstance(part, dict):
            continue
        session_ok = "session_id" not in part or (
            isinstance(part["session_id"], str) and SESSION_ID_RE.match(part["session_id"]))
        if isinstance(part.get("site_key"), str) and SITE_KEY_RE.match(part["site_key"]) and session_ok:
            part["site_key"] = parley.site_key
        if seconds(part.get("wait")) is not None:
            part["wait"] = 0.05


def seconds(value: Any) -> float | None:
    """A valid `wait` as the server reads it (a number, or a string of one, 0 to 30)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and not NUMBER_RE.match(value):
        return None
    number = float(value)
    return number if 0 < number <= 30 else None


@schema.parametrize()
def test_every_operation_holds_under_fuzzing(case: Any, fuzz_server: Parley) -> None:
    with_real_site(case, fuzz_server)
    response = case.call_and_validate(base_url=fuzz_server.base_url, checks=CHECKS, timeout=20)
    assert "Traceback" not in response.text and 'File "' not in response.text
