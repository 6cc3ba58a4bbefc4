"""The events feeds on their own: a change stream that breaks and resumes where it left off, a
polling feed that does not lose an event committed out of id order, and /readyz saying so."""

from __future__ import annotations

import asyncio
from typing import Any

from server.feed import ChangeStreamFeed, PollingFeed
from server.hub import Hub
from server.store.base import StoreUnavailable
from server.store.models import Event
from tests.waiting import eventually


def event(n: int, origin: str = "elsewhere") -> Event:
    return Event(id=n, topic="t", kind="message", payload={"n": n}, origin=origin)


class ScriptedStream:
    """A change stream that hands out `batches` in turn and then breaks, or waits."""

    def __init__(self, batches: list[list[Event]], token: str, breaks: bool) -> None:
        self.batches, self.token, self.breaks = batches, token, breaks

    @property
    def resume_token(self) -> Any:
        return self.token

    async def next_batch(self) -> list[Event]:
        if self.batches:
            return self.batches.pop(0)
        if self.breaks:
            raise StoreUnavailable("primary stepped down")
        await asyncio.sleep(0.01)
        return []

    async def close(self) -> None:
        return None


class ChangeStreamStore:
    def __init__(self) -> None:
        self.opened_with: list[Any] = []
        self.refusals = 0

    async def watch_events(self, *, exclude_origin: str, resume_after: Any = None) -> ScriptedStream:
        self.opened_with.append(resume_after)
        if len(self.opened_with) == 1:
            return ScriptedStream([[event(1)]], token="after-1", breaks=True)
        if self.refusals < 2:  # the new primary is not elected yet
            self.refusals += 1
            raise StoreUnavailable("no primary")
        return ScriptedStream([[event(2)]], token="after-2", breaks=False)


async def test_a_broken_change_stream_resumes_from_its_token_and_reports_while_down():
    store = ChangeStreamStore()
    hub = Hub(store)  # type: ignore[arg-type]
    feed = ChangeStreamFeed(hub, store)
    health: list[bool] = []
    try:
        async with hub.subscribe("t") as subscription:
            got: list[int] = []

            def collect() -> bool:
                health.append(feed.healthy)
                got.extend(e["n"] for e in subscription.drain())
                return got == [1, 2]

            await eventually(collect, timeout=5)
    finally:
        await feed.stop()
    assert store.opened_with == [None, "after-1", "after-1", "after-1"]
    assert False in health and feed.healthy


class OutOfOrderStore:
    """Event 12 commits before event 11 (ids from a counter, two writers)."""

    event_ids_commit_in_order = False

    def __init__(self) -> None:
        self.rows = [event(10)]

    async def latest_event_id(self) -> int:
        return 10

    async def events_since(self, after: int, *, exclude_origin: str, limit: int) -> list[Event]:
        return [e for e in sorted(self.rows, key=lambda e: e.id) if e.id > after][:limit]

    async def events_by_id(self, ids: list[int]) -> list[Event]:
        return [e for e in self.rows if e.id in ids]

    async def record_event(self, *args: Any) -> int:
        return 0

    async def wait_for_news(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


async def test_the_polling_feed_finds_an_event_committed_out_of_order():
    store = OutOfOrderStore()
    hub = Hub(store)  # type: ignore[arg-type]
    feed = PollingFeed(hub, store, interval=0.01)  # type: ignore[arg-type]
    seen: list[int] = []
    try:
        async with hub.subscribe("t") as subscription:
            store.rows.append(event(12))
            await eventually(lambda: bool(seen.extend(e["n"] for e in subscription.drain())) or seen == [12], timeout=5)
            store.rows.append(event(11))
            store.rows.append(event(13, origin=hub.origin))  # our own: never delivered twice
            await eventually(lambda: bool(seen.extend(e["n"] for e in subscription.drain())) or seen == [12, 11], timeout=5)
    finally:
        await feed.stop()


async def test_readyz_fails_while_the_feed_is_down(parley):
    feed = parley.services.bridge
    feed._failed(StoreUnavailable("change stream closed"))
    try:
        response = await parley.client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "store": "ok", "events": "down",
                                   "disk": "ok", "images": "ok"}
    finally:
        feed._recovered()
    assert (await parley.client.get("/readyz")).status_code == 200


class NoChangeStreamStore(OutOfOrderStore):
    """A standalone MongoDB: no change streams, so the feed polls the events collection."""

    async def watch_events(self, *, exclude_origin: str, resume_after: Any = None) -> None:
        return None


async def test_without_change_streams_the_feed_polls():
    store = NoChangeStreamStore()
    hub = Hub(store)  # type: ignore[arg-type]
    feed = ChangeStreamFeed(hub, store, poll_interval=0.01)
    seen: list[int] = []
    try:
        async with hub.subscribe("t") as subscription:
            store.rows.append(event(11))
            await eventually(lambda: bool(seen.extend(e["n"] for e in subscription.drain())) or seen == [11], timeout=5)
            assert feed.healthy
    finally:
        await feed.stop()


async def test_the_polling_feed_on_sqlite_hears_every_other_process_event_once_in_order(tmp_path):
    from server.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "feed.db")
    await store.open()
    hub = Hub(store, origin="here")
    feed = PollingFeed(hub, store, interval=0.01, batch=2)  # a batch boundary falls inside each run
    order = ["here", "there", "here", "here", "there", "there", "there", "here", "here", "here",
             "here", "there"]
    heard: list[int] = []
    try:
        async with hub.subscribe("t") as subscription:
            for n, origin in enumerate(order):
                await store.record_events([("t", "message", {"n": n})], origin)
            wanted = [n for n, origin in enumerate(order) if origin == "there"]
            await eventually(lambda: bool(heard.extend(e["n"] for e in subscription.drain()))
                             or len(heard) >= len(wanted), timeout=10)
            await store.record_events([("t", "message", {"n": 99})], "there")  # and nothing again
            await eventually(lambda: bool(heard.extend(e["n"] for e in subscription.drain()))
                             or 99 in heard, timeout=10)
    finally:
        await feed.stop()
        await store.close()
    assert heard == [*wanted, 99]  # our own events come through the hub, never back from the store


async def test_on_sqlite_another_process_rings_so_its_events_come_before_the_next_poll(tmp_path):
    from server.store.sqlite import SQLiteStore

    here, there = SQLiteStore(tmp_path / "feed.db"), SQLiteStore(tmp_path / "feed.db")
    await here.open()
    await there.open()
    hub = Hub(here, origin="here")
    feed = PollingFeed(hub, here, interval=600)  # without a ring, nothing before the test times out
    heard: list[int] = []
    try:
        async with hub.subscribe("t") as subscription:
            doorbells = tmp_path / "feed.db-doorbells"
            await eventually(lambda: doorbells.exists() and any(doorbells.iterdir()), timeout=10)
            for n in range(3):
                await there.record_events([("t", "message", {"n": n})], "there")
                await eventually(lambda: bool(heard.extend(e["n"] for e in subscription.drain()))
                                 or n in heard, timeout=10)
    finally:
        await feed.stop()
        await there.close()
        await here.close()
    assert heard == [0, 1, 2]
    assert not any(doorbells.iterdir())  # closing takes this process's name away


async def test_a_ring_skips_the_ringer_and_tidies_away_a_process_that_died(tmp_path):
    from server.store.doorbell import Doorbell

    directory = tmp_path / "doorbells"
    own, other = Doorbell(directory), Doorbell(directory)
    try:
        assert not await own.wait(0)  # starts listening
        assert not await other.wait(0)
        (directory / "0123456789abcdef").touch()  # a process killed before it could tidy
        assert own.ring() == 1  # the other, not itself, and not the dead one
        assert await other.wait(10) and not await own.wait(0)
        assert sorted(p.name for p in directory.iterdir()) == sorted([own.name, other.name])
    finally:
        own.close()
        other.close()


async def test_a_name_that_cannot_be_rung_does_not_stop_the_ring_for_the_others(tmp_path):
    from server.store.doorbell import Doorbell

    directory = tmp_path / "doorbells"
    own, other = Doorbell(directory), Doorbell(directory)
    try:
        assert not await own.wait(0)
        assert not await other.wait(0)
        unusable = "x" * 200  # longer than any socket address: sending to it fails outright
        (directory / unusable).touch()
        own._names = lambda: [unusable, other.name]  # the bad name first, whatever the directory's order
        assert own.ring() == 1
        assert await other.wait(10)
    finally:
        own.close()
        other.close()
