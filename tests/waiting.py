"""Waiting for a condition with a deadline, never for a fixed time: CI runs on a loaded machine."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any, Awaitable, Callable

DEFAULT_TIMEOUT = 10.0


async def eventually(check: Callable[[], Any | Awaitable[Any]], *, timeout: float = DEFAULT_TIMEOUT,
                     interval: float = 0.02, what: str = "the condition") -> Any:
    """Poll `check` (plain or async) until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} was not reached within {timeout:g} s"
        await asyncio.sleep(interval)


def eventually_sync(check: Callable[[], Any], *, timeout: float = DEFAULT_TIMEOUT,
                    interval: float = 0.05, what: str = "the condition") -> Any:
    """The same for code outside an event loop (threads, subprocess clusters)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} was not reached within {timeout:g} s"
        time.sleep(interval)
    return value


async def until_held(services: Any, site_id: int, session_id: str, count: int = 1) -> None:
    """Until `count` requests of the session are held open on the server (the widget is listening)."""
    from server.hub import session_topic

    topic = session_topic(site_id, session_id)
    await eventually(lambda: services.hub.waiting_on(topic) >= count,
                     what=f"{count} held request(s) of {session_id}")


async def until_none_held(services: Any, site_id: int, session_id: str) -> None:
    from server.hub import session_topic

    topic = session_topic(site_id, session_id)
    await eventually(lambda: services.hub.waiting_on(topic) == 0,
                     what=f"no held request of {session_id}")


class Blocker:
    """A call that holds the thread it runs on until `release` is set (what queues behind it
    waits), then returns `result`."""

    def __init__(self, result: Any = None) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.result = result

    def __call__(self) -> Any:
        self.started.set()
        self.release.wait(30)
        return self.result

    async def running(self) -> None:
        """Until a thread has started the call."""
        await asyncio.to_thread(self.started.wait, 30)
