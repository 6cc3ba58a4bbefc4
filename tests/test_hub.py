"""The hub's own promises: a subscriber that falls behind is told so, never silently short."""

from __future__ import annotations

import asyncio

from server.hub import SUBSCRIPTION_BUFFER, Hub
from tests.waiting import eventually


async def test_an_overflowing_subscription_says_so_and_recovers(parley):
    hub: Hub = parley.services.hub
    async with hub.subscribe("topic:a", "topic:b") as subscription:
        for n in range(SUBSCRIPTION_BUFFER + 10):
            hub.deliver_local("topic:a" if n % 2 else "topic:b", {"kind": "message", "n": n})
        assert subscription.overflowed
        assert [e["n"] for e in subscription.drain()] == list(range(SUBSCRIPTION_BUFFER))
        assert not subscription.overflowed
        hub.deliver_local("topic:b", {"kind": "message", "n": -1})
        assert [e["n"] for e in subscription.drain()] == [-1]
    assert hub.subscriber_count == 0


async def test_a_held_read_that_missed_events_reads_again(parley):
    hub: Hub = parley.services.hub
    reads = []

    async def fetch() -> int:
        reads.append(1)
        return len(reads)

    held = asyncio.create_task(hub.hold("topic:x", 10, fetch, lambda n: False, address="1.2.3.4"))
    await eventually(lambda: hub.waiting_on("topic:x"), what="the hold to start")
    for n in range(SUBSCRIPTION_BUFFER + 1):  # none of a waking kind, but too many to know
        hub.deliver_local("topic:x", {"kind": "noise", "n": n})
    assert await asyncio.wait_for(held, 20) == 2
