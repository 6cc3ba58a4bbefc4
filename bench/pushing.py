"""Operator messages offered at a fixed rate to random visitors, each text stamped with its phase and
the wall-clock time its write began, so the visitor's side can tell the store-to-visitor delay."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Awaitable, Callable

from bench.common import bench_session

MAX_IN_FLIGHT = 1000
DRAIN_SECONDS = 30


def stamp(phase: str) -> str:
    return f"{phase} {time.time():.6f}"


async def push_at_rate(send: Callable[[str, str], Awaitable[Any]], *, sessions: int, rate: float,
                       seconds: float, phase: str, seed: int = 1) -> dict[str, Any]:
    """Offer `rate` messages a second for `seconds`. A write that is still running does not hold
    up the next one (an operator does not wait for other operators), up to MAX_IN_FLIGHT at once;
    past that, offers are counted as skipped: the server is not keeping up."""
    chooser = random.Random(seed)
    in_flight: set[asyncio.Task[Any]] = set()
    counts = {"completed": 0, "errors": 0, "skipped": 0}
    first_error: list[str] = []

    def done(task: asyncio.Task[Any]) -> None:
        in_flight.discard(task)
        if task.cancelled() or task.exception() is not None:
            counts["errors"] += 1
            if not first_error and not task.cancelled():
                first_error.append(repr(task.exception()))
        else:
            counts["completed"] += 1

    offered = 0
    started = time.perf_counter()
    total = int(rate * seconds)
    while offered < total:
        due = started + offered / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= MAX_IN_FLIGHT:
            counts["skipped"] += 1
        else:
            task = asyncio.ensure_future(send(bench_session(chooser.randrange(sessions)), stamp(phase)))
            in_flight.add(task)
            task.add_done_callback(done)
        offered += 1
    offering = time.perf_counter() - started
    if in_flight:
        await asyncio.wait(set(in_flight), timeout=DRAIN_SECONDS)
    elapsed = time.perf_counter() - started
    return {"phase": phase, "offered": offered, "offered_per_s": round(offered / offering, 1),
            **counts, "completed_per_s": round(counts["completed"] / elapsed, 1),
            "seconds": round(elapsed, 2), "first_error": first_error[0] if first_error else None}
