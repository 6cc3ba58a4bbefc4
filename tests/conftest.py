from __future__ import annotations

import os
from typing import AsyncIterator

import pytest

import server.turns

from tests.harness import Parley, start_parley

# The fake OpenAI-compatible upstream and a Parley wired to it, for the AI tests.
pytest_plugins = ["tests.fake_openai", "tests.mongo"]


@pytest.fixture
async def parley(request, tmp_path, monkeypatch) -> AsyncIterator[Parley]:
    """Parley on SQLite; with PARLEY_TEST_STORE=mongodb every test using it runs on MongoDB (and
    the CLI commands the test runs reach the same database)."""
    backend = {}
    if os.environ.get("PARLEY_TEST_STORE") == "mongodb":
        backend["store"] = request.getfixturevalue("mongo_uri")
        monkeypatch.setenv("PARLEY_STORE", backend["store"])
    async for harness in start_parley(tmp_path, **backend):
        yield harness


@pytest.fixture
def leaving_cuts_at_once(monkeypatch) -> None:
    """A stream's client leaving cuts its answer at once, not after the grace a retry gets."""
    monkeypatch.setattr(server.turns, "ABANDONED_AFTER_SECONDS", 0)
