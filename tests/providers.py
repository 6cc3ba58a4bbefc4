"""Providers a test can steer: release chunks one at a time, stall, or fail."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from server.ai.base import AIUnavailable, AnswerRequest, Provider


class GatedProvider(Provider):
    """Yields `chunks` one by one, each only after the test calls `release()`."""

    name = "gated"

    def __init__(self, chunks: list[str], *, fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self._gate: asyncio.Queue[None] = asyncio.Queue()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.requests: list[AnswerRequest] = []
        self.yielded = 0  # chunks handed to the answer so far

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._gate.put_nowait(None)

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        self.requests.append(request)
        self.started.set()
        try:
            for index, chunk in enumerate(self.chunks):
                if self.fail_after is not None and index == self.fail_after:
                    raise AIUnavailable("The assistant stopped unexpectedly.")
                await asyncio.wait_for(self._gate.get(), timeout=10)
                self.yielded += 1
                yield chunk
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
