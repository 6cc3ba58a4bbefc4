"""Sites by key, read at most once per SITE_CACHE_SECONDS per process: a change made through this
process's SiteService counts at once, one made elsewhere (another process, the CLI) within the
window. The clock is injected; nothing here sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from server.errors import UnknownSite
from server.sites import SITE_CACHE_SECONDS, SiteService
from server.store.models import Site
from server.store.sqlite import SQLiteStore
from tests.waiting import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SitesOnly:
    """The part of a store SiteService uses, in memory, counting its reads; `changed_elsewhere`
    stands for another process writing the database."""

    def __init__(self) -> None:
        self.by_id: dict[int, Site] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None  # when set, a read waits for it

    def add(self, key: str) -> Site:
        site = Site(id=len(self.by_id) + 1, site_key=key, name=key, allowed_origins=[],
                    settings={"title": "Hi"}, enabled=True, created_at="2026-01-01T00:00:00Z")
        self.by_id[site.id] = site
        return site

    def changed_elsewhere(self, site_id: int, **changes) -> None:
        self.by_id[site_id] = dataclasses.replace(self.by_id[site_id], **changes)

    async def get_site_by_key(self, site_key: str) -> Site | None:
        self.reads += 1
        found = next((s for s in self.by_id.values() if s.site_key == site_key), None)
        if self.gate is not None:
            await self.gate.wait()
        # A copy, as a database read gives: equal, not the same object.
        return dataclasses.replace(found, settings=dict(found.settings)) if found else None

    async def update_site_settings(self, site_id: int, changes: dict) -> Site:
        site = self.by_id[site_id]
        self.by_id[site_id] = dataclasses.replace(site, settings={**site.settings, **changes})
        return self.by_id[site_id]

    async def update_site(self, site_id: int, *, name=None, allowed_origins=None, site_key=None) -> Site:
        site = self.by_id[site_id]
        self.by_id[site_id] = dataclasses.replace(site, site_key=site_key or site.site_key)
        return self.by_id[site_id]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> SitesOnly:
    return SitesOnly()


@pytest.fixture
def sites(store: SitesOnly, clock: Clock) -> SiteService:
    return SiteService(store, clock=clock)  # type: ignore[arg-type]


async def test_requests_within_the_window_share_one_read_and_one_object(sites, store, clock):
    store.add("sk_a")
    first = await sites.get("sk_a")
    clock.advance(SITE_CACHE_SECONDS - 0.1)
    assert await sites.get("sk_a") is first and store.reads == 1
    clock.advance(0.2)  # past the window: read again; unchanged, so the same object stays shared
    assert await sites.get("sk_a") is first and store.reads == 2


async def test_a_change_made_elsewhere_counts_once_the_window_has_passed(sites, store, clock):
    site = store.add("sk_a")
    await sites.get("sk_a")
    store.changed_elsewhere(site.id, settings={"title": "New"})
    assert (await sites.get("sk_a")).settings["title"] == "Hi"  # within the window
    clock.advance(SITE_CACHE_SECONDS)
    assert (await sites.get("sk_a")).settings["title"] == "New"


async def test_a_site_disabled_elsewhere_stops_answering_within_the_window(sites, store, clock):
    site = store.add("sk_a")
    await sites.get("sk_a")
    store.changed_elsewhere(site.id, enabled=False)
    clock.advance(SITE_CACHE_SECONDS)
    with pytest.raises(UnknownSite):
        await sites.get("sk_a")
    with pytest.raises(UnknownSite):  # remembered as disabled, still refused
        await sites.get("sk_a")
    store.changed_elsewhere(site.id, enabled=True)
    clock.advance(SITE_CACHE_SECONDS)
    assert (await sites.get("sk_a")).enabled


async def test_changes_made_here_count_at_once(sites, store, clock):
    site = store.add("sk_a")
    await sites.get("sk_a")
    await sites.update_settings(site.id, {"title": "Changed"})
    assert (await sites.get("sk_a")).settings["title"] == "Changed"
    await sites.update(site.id, site_key="sk_b")
    with pytest.raises(UnknownSite):  # the old key stops working here at once
        await sites.get("sk_a")
    assert (await sites.get("sk_b")).id == site.id


async def test_a_read_that_began_before_a_change_here_is_not_kept(sites, store, clock):
    site = store.add("sk_a")
    store.gate = asyncio.Event()
    reading = asyncio.create_task(sites.get("sk_a"))  # reads the old settings, then is slow
    await eventually(lambda: store.reads > 0)
    await sites.update_settings(site.id, {"title": "Changed"})  # lands while the read waits
    store.gate.set()
    assert (await reading).settings["title"] == "Hi"
    assert (await sites.get("sk_a")).settings["title"] == "Changed"


async def test_unknown_keys_are_not_remembered_and_the_cache_is_bounded(sites, store, clock, monkeypatch):
    monkeypatch.setattr("server.sites.CACHED_SITES", 2)
    for key in ("sk_a", "sk_b", "sk_c"):
        store.add(key)
    for _ in range(3):
        with pytest.raises(UnknownSite):
            await sites.get("sk_nobody")
    assert store.reads == 3
    created_elsewhere = store.add("sk_nobody")
    assert (await sites.get("sk_nobody")).id == created_elsewhere.id  # a new site works at once
    for key in ("sk_a", "sk_b", "sk_c"):
        await sites.get(key)
    reads = store.reads
    await sites.get("sk_c")
    assert store.reads == reads  # remembered
    await sites.get("sk_a")
    assert store.reads == reads + 1  # pushed out by the bound


async def test_a_widget_request_sees_a_site_disabled_in_the_database_within_the_window(tmp_path, clock):
    """Through a real store: another process (here, a plain connection) disables the site."""
    store = SQLiteStore(tmp_path / "parley.sqlite3")
    await store.open()
    try:
        sites = SiteService(store, clock=clock)
        site = await sites.create("Shop")
        assert (await sites.resolve(site.site_key, None)).id == site.id
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE sites SET enabled = 0 WHERE id = ?", (site.id,))
        db.close()
        assert (await sites.resolve(site.site_key, None)).id == site.id  # within the window
        clock.advance(SITE_CACHE_SECONDS)
        with pytest.raises(UnknownSite):
            await sites.resolve(site.site_key, None)
    finally:
        await store.close()


async def test_requests_that_miss_at_once_share_one_read(sites, store, clock):
    site = store.add("sk_a")
    store.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(sites.get(key)) for key in ["sk_a"] * 20 + ["sk_nobody"] * 5]
    await eventually(lambda: store.reads == 2)
    one_leaves = waiting.pop(0)
    one_leaves.cancel()  # a request that leaves does not stop the read the others wait for
    store.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [r.id for r in results[:19]] == [site.id] * 19
    assert all(isinstance(r, UnknownSite) for r in results[19:])
    assert store.reads == 2
    # A change made here while a read is under way: requests after it read again.
    clock.advance(SITE_CACHE_SECONDS)
    store.gate = asyncio.Event()
    before = asyncio.ensure_future(sites.get("sk_a"))
    await eventually(lambda: store.reads == 3)
    await sites.update_settings(site.id, {"title": "Changed"})
    after = asyncio.ensure_future(sites.get("sk_a"))
    await eventually(lambda: store.reads == 4)
    store.gate.set()
    assert ((await before).settings["title"], (await after).settings["title"]) == ("Hi", "Changed")
