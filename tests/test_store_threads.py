"""The store's threads: every call's result or error reaches its caller, a call cancelled before it
starts never runs (a write the caller gave up on is not made later), and shutting down runs what
was already submitted."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.store.threads import StoreThreads


async def test_results_and_errors_reach_their_callers_in_any_number():
    threads = StoreThreads("test", 3)

    def square(n: int) -> int:
        if n == 7:
            raise ValueError("seven")
        return n * n

    futures = [threads.submit(square, n) for n in range(200)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
    assert [r for n, r in enumerate(results) if n != 7] == [n * n for n in range(200) if n != 7]
    assert isinstance(results[7], ValueError)
    assert len(threads._threads) <= 3
    await asyncio.to_thread(threads.shutdown)


async def test_a_call_cancelled_before_it_starts_does_not_run():
    threads = StoreThreads("test", 1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        started.set()
        release.wait(30)

    busy = threads.submit(block)
    await asyncio.to_thread(started.wait, 30)
    given_up = threads.submit(ran.append, "given up")
    kept = threads.submit(ran.append, "kept")
    given_up.cancel()
    release.set()
    await asyncio.wait_for(kept, 30)
    await busy
    assert ran == ["kept"]
    await asyncio.to_thread(threads.shutdown)


async def test_shutting_down_runs_what_was_submitted_then_refuses():
    threads = StoreThreads("test", 2)
    done: list[int] = []
    futures = [threads.submit(done.append, n) for n in range(50)]
    await asyncio.to_thread(threads.shutdown)
    assert sorted(done) == list(range(50))
    await asyncio.wait_for(asyncio.gather(*futures), 30)  # handed over after the threads ended
    with pytest.raises(RuntimeError):
        threads.submit(done.append, 99)


async def test_a_caller_that_gave_up_while_its_call_ran_leaves_the_others_settled():
    threads = StoreThreads("test", 1)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(30)
        return "late"

    abandoned = threads.submit(slow)
    after = threads.submit(lambda: "next")
    await asyncio.to_thread(started.wait, 30)
    abandoned.cancel()
    release.set()
    assert await asyncio.wait_for(after, 30) == "next"
    assert abandoned.cancelled()
    await asyncio.to_thread(threads.shutdown)
