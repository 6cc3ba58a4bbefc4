from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.harness import Parley, start_parley


@pytest.fixture
async def parley(tmp_path) -> AsyncIterator[Parley]:
    async for harness in start_parley(tmp_path):
        yield harness
