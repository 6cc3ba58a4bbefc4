from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.harness import Parley, start_parley

# The fake OpenAI-compatible upstream and a Parley wired to it, for the AI tests.
pytest_plugins = ["tests.fake_openai", "tests.mongo"]


@pytest.fixture
async def parley(tmp_path) -> AsyncIterator[Parley]:
    async for harness in start_parley(tmp_path):
        yield harness
