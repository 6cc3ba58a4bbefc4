"""Visitors' presence is written in batches: many visitors online cost the store one write a
second, not one each, and a store that refuses a batch costs nothing but that batch."""

from __future__ import annotations

import asyncio
import logging

from server.presence import PresenceWriter
from server.store.base import StoreUnavailable
from tests.dashboard import sign_in
from tests.harness import Parley, session
from tests.waiting import eventually


async def test_many_visitors_online_are_written_together_and_operators_see_them(parley: Parley, monkeypatch):
    store = parley.services.store
    batches: list[int] = []
    single_updates: list[int] = []
    write_batch, write_one = store.write_presence, store.update_conversation

    async def counted_batch(changes, **kwargs):
        batches.append(len(changes))
        await write_batch(changes, **kwargs)

    async def counted_one(conversation_id, changes):
        single_updates.append(conversation_id)
        await write_one(conversation_id, changes)

    monkeypatch.setattr(store, "write_presence", counted_batch)
    monkeypatch.setattr(store, "update_conversation", counted_one)
    operator = await sign_in(parley, "ana@example.com")
    try:
        visitors = [session(f"online-{n}") for n in range(30)]
        await asyncio.gather(*(parley.get("pending-proactive", **parley.ids(sid),
                                          page_url=f"https://shop.test/p{n}")
                               for n, sid in enumerate(visitors)))

        async def all_listed() -> bool:
            listed = (await operator.api("visitors")).json()["visitors"]
            return sorted(v["session_id"] for v in listed) == sorted(visitors)

        await eventually(all_listed, timeout=10, what="30 visitors online")
    finally:
        await operator.client.aclose()
    assert sum(batches) == 30 and len(batches) <= 3, batches  # a second's worth in one write
    assert single_updates == []


class RefusingStore:
    def __init__(self) -> None:
        self.calls = 0

    async def write_presence(self, changes, *, events, origin) -> None:
        self.calls += 1
        raise StoreUnavailable("database is locked")


class Hub:
    origin = "here"

    def __init__(self) -> None:
        self.delivered: list = []

    def deliver_recorded(self, events) -> None:
        self.delivered.extend(events)


async def test_a_batch_the_store_refuses_is_dropped_with_a_warning(caplog):
    store, hub = RefusingStore(), Hub()
    writer = PresenceWriter(store, hub, batch_seconds=0.01)  # type: ignore[arg-type]
    writer.note(1, {"last_seen_at": 1.0}, [("site:1", "seen", {"session_id": "s"})])
    with caplog.at_level(logging.WARNING, logger="server.presence"):
        await eventually(lambda: store.calls == 1 and writer.pending == 0, timeout=10)
        await writer.close()
    assert "presence of 1 visitor(s) not written: database is locked" in caplog.text
    assert hub.delivered == []  # nobody is told of a write that did not happen
    assert store.calls == 1  # nothing left to write at close


async def test_what_is_noted_is_written_at_shutdown(parley: Parley):
    chat = parley.services.chat
    await parley.get("pending-proactive", **parley.ids(session("leaving")), page_url="https://shop.test/")
    conversation = await parley.services.store.get_conversation(parley.site.id, session("leaving"))
    assert conversation is not None
    chat.presence.note(conversation.id, {"last_seen_at": 12345.0})
    await chat.presence.close()
    written = await parley.services.store.get_conversation(parley.site.id, session("leaving"))
    assert written is not None and written.last_seen_at == 12345.0
