"""The store's threads: every call's result or error reaches its caller, a call cancelled before it
starts never runs (a write the caller gave up on is not made later), and shutting down runs what
was already submitted."""

from __future__ import annotations

import asyncio

import pytest

from server.store.threads import StoreThreads
from tests.waiting import Blocker, eventually


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
    assert threads.threads <= 3
    await asyncio.to_thread(threads.shutdown)


async def test_a_call_cancelled_before_it_starts_does_not_run():
    threads = StoreThreads("test", 1)
    block = Blocker()
    ran: list[str] = []
    busy = threads.submit(block)
    await block.running()
    given_up = threads.submit(ran.append, "given up")
    kept = threads.submit(ran.append, "kept")
    given_up.cancel()
    block.release.set()
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
    slow = Blocker("late")
    abandoned = threads.submit(slow)
    after = threads.submit(lambda: "next")
    await slow.running()
    abandoned.cancel()
    slow.release.set()
    assert await asyncio.wait_for(after, 30) == "next"
    assert abandoned.cancelled()
    await asyncio.to_thread(threads.shutdown)


async def test_one_thread_takes_the_calls_while_it_keeps_up():
    threads = StoreThreads("test", 4, spill_after=30)
    results = await asyncio.wait_for(asyncio.gather(*[threads.submit(abs, -n) for n in range(300)]), 30)
    assert results == list(range(300))
    assert threads.threads == 1  # a pool would have started a thread for each call that found none idle
    await asyncio.to_thread(threads.shutdown)


async def test_a_call_stuck_behind_a_slow_one_gets_another_thread_which_ends_when_idle():
    threads = StoreThreads("test", 2, spill_after=0.01, linger=0.05)
    slow = Blocker("slow")
    slow_call = threads.submit(slow)
    await slow.running()
    # Answered while the slow call still holds the first thread: it can only have run on another.
    assert await asyncio.wait_for(threads.submit(lambda: "quick"), 30) == "quick"
    assert not slow_call.done()
    slow.release.set()
    assert await asyncio.wait_for(slow_call, 30) == "slow"
    await eventually(lambda: threads.threads == 1, what="the helper thread to end once idle")
    assert await asyncio.wait_for(threads.submit(lambda: "still served"), 30) == "still served"
    await asyncio.to_thread(threads.shutdown)


@pytest.mark.parametrize("backlog, threads_after", [(3, 2), (10, 1)])
async def test_a_backlog_gets_another_thread_even_while_calls_end(backlog, threads_after):
    threads = StoreThreads("test", 2, spill_after=30, backlog=backlog)
    slow = Blocker("slow")
    slow_call = threads.submit(slow)
    await slow.running()
    queued = [threads.submit(abs, -n) for n in range(3)]
    # The spill check as it runs `spill_after` later, with calls having ended since it was armed.
    threads._spill(asyncio.get_running_loop(), threads._ended - 1)
    assert threads.threads == threads_after
    if threads_after == 2:  # answered while the slow call still holds the first thread
        assert await asyncio.wait_for(asyncio.gather(*queued), 30) == [0, 1, 2]
        assert not slow_call.done()
    slow.release.set()
    assert await asyncio.wait_for(asyncio.gather(slow_call, *queued), 30) == ["slow", 0, 1, 2]
    await asyncio.to_thread(threads.shutdown)
