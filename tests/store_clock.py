"""A settable clock for the times the stores write (created_at, first_*_at, handoff_at): a fixture
with known times gives known numbers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import server.store.mongo
import server.store.sqlite


@dataclass
class StoreClock:
    now: str = "2026-03-01T00:00:00Z"

    def __call__(self) -> str:
        return self.now


@pytest.fixture
def store_clock(monkeypatch) -> StoreClock:
    clock = StoreClock()
    monkeypatch.setattr(server.store.sqlite, "utc_now_iso", clock)
    monkeypatch.setattr(server.store.mongo, "utc_now_iso", clock)
    return clock
