"""One suite for the Store interface, run on every backend: SQLite, and MongoDB (the nx-27017
stand-in the fixtures start, or a real replica set with PARLEY_TEST_MONGO_URI).

`store` and `other` are two handles on the same data, as two processes would hold them."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest

from server.feed import build_feed
from server.hub import Hub
from server.store.base import DuplicateMessageId, Store
from server.store.models import Source
from server.store.mongo import MongoStore
from server.store.sqlite import SQLiteStore
from tests.store_clock import StoreClock, store_clock  # noqa: F401 - a fixture

BACKENDS = ["sqlite", "mongodb"]


@pytest.fixture(params=BACKENDS)
async def stores(request, tmp_path) -> AsyncIterator[tuple[Store, Store]]:
    if request.param == "sqlite":
        make = lambda: SQLiteStore(tmp_path / "parley.sqlite3")  # noqa: E731
    else:
        uri = request.getfixturevalue("mongo_uri")
        make = lambda: MongoStore(uri)  # noqa: E731
    first, second = make(), make()
    await first.open()
    await second.open()
    yield first, second
    await second.close()
    await first.close()


@pytest.fixture
def store(stores) -> Store:
    return stores[0]


@pytest.fixture
def other(stores) -> Store:
    return stores[1]


async def new_site(store: Store, name: str = "Shop") -> int:
    site = await store.create_site(f"sk_{name.lower():_<30}", name, [], {"lang": "en"})
    return site.id


SESSION = "sess_conformance00000001"


async def conversation_id(store: Store, site_id: int, session_id: str = SESSION) -> int:
    return (await store.ensure_conversation(site_id, session_id, {"lang": "en"})).id


# -- sites and conversations ----------------------------------------------------------------------
async def test_sites_and_settings_merge(store, other):
    site_id = await new_site(store)
    site = await other.get_site_by_key("sk_shop" + "_" * 26)
    assert site is not None and site.id == site_id and site.settings == {"lang": "en"} and site.enabled
    await store.update_site_settings(site_id, {"ai": {"model": "m"}})
    updated = await other.update_site_settings(site_id, {"title": "Hi"})
    assert updated.settings == {"lang": "en", "ai": {"model": "m"}, "title": "Hi"}
    assert [s.id for s in await other.list_sites()] == [site_id]
    assert await store.get_site_by_key("sk_missing" + "_" * 24) is None


async def test_a_conversation_is_made_once_and_changes_only_where_allowed(store, other):
    site_id = await new_site(store)
    first, again = await asyncio.gather(
        store.ensure_conversation(site_id, SESSION, {"page_url": "https://shop.test/a"}),
        other.ensure_conversation(site_id, SESSION, {"page_url": "https://shop.test/b"}))
    assert first.id == again.id and first.mode == "ai" and first.handoff is False
    await store.update_conversation(first.id, {"mode": "operator", "email": "a@b.co", "rating": 4})
    seen = await other.get_conversation(site_id, SESSION)
    assert (seen.mode, seen.email, seen.rating, seen.session_id) == ("operator", "a@b.co", 4, SESSION)
    with pytest.raises(ValueError):
        await store.update_conversation(first.id, {"site_id": 99})
    assert await store.get_conversation(site_id, "sess_nobody0000000000000") is None


async def test_a_handoff_keeps_its_reason_until_someone_picks_it_up(store, other):
    site_id = await new_site(store)
    conv = await conversation_id(store, site_id)
    assert (await other.get_conversation(site_id, SESSION)).handoff_reason is None
    await store.update_conversation(conv, {"handoff": True, "handoff_reason": "ai_failed"})
    seen = await other.get_conversation(site_id, SESSION)
    assert (seen.handoff, seen.handoff_reason) == (True, "ai_failed")
    # Only the fixed reasons, only with a handoff, and never a handoff without one.
    for bad in ({"handoff": True}, {"handoff": True, "handoff_reason": "because"},
                {"handoff_reason": "ai_failed"}, {"handoff": False, "handoff_reason": "ai_failed"}):
        with pytest.raises(ValueError):
            await store.update_conversation(conv, bad)
    assert (await other.get_conversation(site_id, SESSION)).handoff_reason == "ai_failed"
    await store.update_conversation(conv, {"mode": "operator", "handoff": False})  # picked up
    seen = await other.get_conversation(site_id, SESSION)
    assert (seen.mode, seen.handoff, seen.handoff_reason) == ("operator", False, None)


async def test_an_operator_message_answers_the_handoff_and_keeps_when_it_began(store, other):
    site_id = await new_site(store)
    conv = await conversation_id(store, site_id)
    await store.update_conversation(conv, {"handoff": True, "handoff_reason": "asked_for_person"})
    await store.add_message(conv, "visitor", "Still there?")  # a visitor's message answers nothing
    assert (await other.get_conversation(site_id, SESSION)).handoff is True
    await store.add_operator_message(site_id, SESSION, "Hi, Ana here.", operator_name="Ana",
                                     events=lambda message: [], origin="test")
    seen = await other.get_conversation(site_id, SESSION)
    assert (seen.mode, seen.handoff, seen.handoff_reason) == ("ai", False, None)
    assert seen.handoff_at is not None and seen.first_reply_wait is not None


async def test_presence_of_many_conversations_is_written_with_its_events(store, other):
    site_id = await new_site(store)
    first = await conversation_id(store, site_id)
    second = await conversation_id(store, site_id, "sess_conformance00000002")
    before = (await store.get_conversation(site_id, SESSION)).updated_at
    start = await other.latest_event_id()
    await store.write_presence(
        {first: {"last_seen_at": 100.0, "page_url": "https://shop.test/a"},
         second: {"last_seen_at": 200.0}},
        events=[(f"site:{site_id}", "seen", {"session_id": SESSION})], origin="A")
    seen = await other.get_conversation(site_id, SESSION)
    assert (seen.last_seen_at, seen.page_url) == (100.0, "https://shop.test/a")
    assert seen.updated_at == before  # presence is not activity: the inbox order stays
    assert (await other.get_conversation(site_id, "sess_conformance00000002")).last_seen_at == 200.0
    [event] = await other.events_since(start, exclude_origin="B", limit=10)
    assert (event.kind, event.payload) == ("seen", {"session_id": SESSION})
    with pytest.raises(ValueError):
        await store.write_presence({first: {"mode": "operator"}}, events=[], origin="A")


# -- messages -------------------------------------------------------------------------------------
async def test_messages_come_oldest_first_and_after_is_a_cursor(store):
    conv = await conversation_id(store, await new_site(store))
    stored = [await store.add_message(conv, role, f"text {n}") for n, role in
              enumerate(["visitor", "ai", "operator", "visitor", "ai"])]
    ids = [m.id for m in stored]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [m.content for m in await store.list_messages(conv)] == [f"text {n}" for n in range(5)]
    assert [m.id for m in await store.list_messages(conv, after=ids[1], limit=2)] == ids[2:4]
    assert [m.role for m in await store.list_messages(conv, roles=("operator",))] == ["operator"]
    assert await store.list_messages(conv, after=ids[-1]) == []
    assert [m.id for m in await store.recent_messages(conv, 2)] == ids[3:]


async def test_a_held_read_gets_the_conversation_and_its_messages_together(store, other):
    site_id = await new_site(store)
    assert await other.conversation_messages(site_id, SESSION, after=None, limit=10) == (None, [])
    conv = await conversation_id(store, site_id)
    stored = [await store.add_message(conv, role, f"text {n}")
              for n, role in enumerate(["visitor", "operator", "ai", "operator"])]
    await store.update_conversation(conv, {"mode": "operator"})
    conversation, messages = await other.conversation_messages(site_id, SESSION, after=None, limit=10)
    assert conversation == await store.get_conversation(site_id, SESSION)
    assert conversation.mode == "operator" and messages == stored
    _, mine = await other.conversation_messages(site_id, SESSION, after=stored[1].id, limit=10,
                                                roles=("operator",))
    assert mine == [stored[3]]
    assert (await other.conversation_messages(site_id, SESSION, after=stored[0].id, limit=1))[1] == \
        [stored[1]]
    other_site = await new_site(store, "Other")  # keyed by the site: the same session id elsewhere
    assert await other.conversation_messages(other_site, SESSION) == (None, [])


async def test_an_operator_message_is_stored_with_its_conversation_and_events(store, other):
    site_id = await new_site(store)
    start = await other.latest_event_id()

    def events(message):
        return [("session:t", "message", {"message_id": message.id}), ("site:t", "message", {})]

    first = await store.add_operator_message(site_id, SESSION, "Hello from Ana", operator_name="Ana",
                                             events=events, origin="A")
    assert first.role == "operator" and first.operator_name == "Ana" and first.content == "Hello from Ana"
    conversation = await other.get_conversation(site_id, SESSION)  # made for the message
    assert conversation is not None and conversation.mode == "ai"
    assert conversation.first_operator_at == first.created_at
    second = await other.add_operator_message(site_id, SESSION, "Still there?", operator_name="Bo",
                                              events=events, origin="B")
    assert second.id > first.id and second.conversation_id == first.conversation_id == conversation.id
    assert await store.list_messages(conversation.id) == [first, second]
    recorded = await store.events_since(start, exclude_origin="", limit=10)
    assert [(e.topic, e.payload, e.origin) for e in recorded] == [
        ("session:t", {"message_id": first.id}, "A"), ("site:t", {}, "A"),
        ("session:t", {"message_id": second.id}, "B"), ("site:t", {}, "B")]


async def test_message_fields_round_trip(store, other):
    conv = await conversation_id(store, await new_site(store))
    await store.add_message(conv, "visitor", "Hello", message_id="m_1")
    answer = await store.add_message(conv, "ai", "Hi!", reply_to="m_1", status="interrupted",
                                     sources=[Source("Shipping", "https://shop.test/s")],
                                     usage={"prompt_tokens": 3})
    got = (await other.list_messages(conv))[-1]
    assert got == answer
    assert got.sources == [Source("Shipping", "https://shop.test/s")] and got.usage == {"prompt_tokens": 3}
    assert got.created_at.endswith("Z") and got.status == "interrupted"


async def test_answers_keep_their_relevance_and_the_gaps_are_listed(store, other):
    site = await new_site(store)
    conv = await conversation_id(store, site)
    for number, (question, relevance) in enumerate([("Do you ship?", 0.9), ("Stickers?", 0.1),
                                                    ("Refunds?", 0.3)]):
        await store.add_message(conv, "visitor", question, message_id=f"m_{number}")
        await store.add_message(conv, "ai", "…", reply_to=f"m_{number}", relevance=relevance)
    await store.add_message(conv, "operator", "Hi", operator_name="Ana")  # no relevance: not a gap
    gaps = await other.knowledge_gaps(site, below=0.45)
    assert [(g.question, g.relevance, g.session_id) for g in gaps] == [
        ("Refunds?", 0.3, SESSION), ("Stickers?", 0.1, SESSION)]
    assert gaps[0].asked_at.endswith("Z")
    assert await other.knowledge_gaps(site, below=0.45, limit=1) == gaps[:1]
    assert await other.knowledge_gaps(await new_site(store, "Other"), below=1.0) == []
    assert (await other.list_messages(conv))[1].relevance == 0.9


async def activity_fixture(store: Store, clock: StoreClock) -> tuple[int, int]:
    """Four conversations started from 2 to 3 March, one on 5 March, one on another site."""
    site, other_site = await new_site(store), await new_site(store, "Other")

    async def at(time: str, conv: int, role: str, text: str = "…", **fields) -> None:
        clock.now = f"2026-03-{time}Z"
        await store.add_message(conv, role, text, **fields)

    c1, c2, c3, c4, c5 = [await conversation_id(store, site, f"sess_activity000000{n}") for n in range(1, 6)]
    await at("02T09:10:00", c1, "visitor", "Do you ship?", message_id="m_1")
    await at("02T09:10:05", c1, "ai", reply_to="m_1", relevance=0.9)  # answered by the AI alone
    await at("02T09:30:00", c2, "visitor", "Can I return shoes?", message_id="m_1")
    await at("02T09:30:02", c2, "ai", reply_to="m_1", relevance=0.2)
    await store.update_conversation(c2, {"handoff": True, "handoff_reason": "not_covered"})  # 09:30:02
    await at("02T09:31:32", c2, "operator", operator_name="Ana")  # 90 s later
    await at("03T14:00:00", c3, "visitor", "I want a person", message_id="m_1")
    await at("03T14:00:01", c3, "ai", reply_to="m_1", relevance=0.7)
    await store.update_conversation(c3, {"handoff": True, "handoff_reason": "asked_for_person"})  # 14:00:01
    await at("03T14:02:00", c3, "visitor", "Hello?", message_id="m_2")
    clock.now = "2026-03-03T14:03:00Z"
    # A second handoff keeps the first time.
    await store.update_conversation(c3, {"handoff": True, "handoff_reason": "asked_for_person"})
    await at("03T14:05:01", c3, "operator", operator_name="Ana")  # 300 s after the first handoff
    await at("03T14:06:00", c3, "operator", operator_name="Ana")
    await at("03T14:20:00", c4, "visitor", "Where is my order?", message_id="m_1")
    await store.update_conversation(c4, {"handoff": True, "handoff_reason": "ai_failed"})  # the AI failed: nobody answered yet
    for conv, score in ((c1, 5), (c2, 3), (c3, 5)):
        await store.update_conversation(conv, {"rating": score})
    await at("05T10:00:00", c5, "visitor", "Later", message_id="m_1")  # outside the range
    await at("05T10:00:02", c5, "ai", reply_to="m_1")
    await store.update_conversation(c5, {"rating": 1})
    elsewhere = await conversation_id(store, other_site, "sess_activity0000009")
    await at("02T09:00:00", elsewhere, "visitor", "Other site", message_id="m_1")
    silent = await conversation_id(store, site, "sess_activity0000008")  # the visitor never wrote
    await at("02T11:00:00", silent, "operator", operator_name="Ana")
    return site, other_site


async def test_site_activity_is_aggregated_over_a_range(store, other, store_clock):
    site, other_site = await activity_fixture(store, store_clock)
    numbers = await other.site_activity(site, since="2026-03-01T00:00:00Z", until="2026-03-05T00:00:00Z")
    assert (numbers.conversations, numbers.ai_only, numbers.handoffs, numbers.answered_handoffs) == (4, 1, 3, 2)
    assert numbers.median_first_reply == 195.0  # (90 + 300) / 2
    assert numbers.ratings == {5: 2, 3: 1}
    assert numbers.visitor_messages == 5
    assert numbers.messages_by_hour == {"2026-03-02T09": 2, "2026-03-03T14": 3}
    one_day = await other.site_activity(site, since="2026-03-03T00:00:00Z", until="2026-03-04T00:00:00Z")
    assert (one_day.conversations, one_day.handoffs, one_day.answered_handoffs, one_day.median_first_reply,
            one_day.ratings, one_day.visitor_messages) == (2, 2, 1, 300.0, {5: 1}, 3)
    empty = await other.site_activity(site, since="2026-04-01T00:00:00Z", until="2026-05-01T00:00:00Z")
    assert (empty.conversations, empty.ai_only, empty.handoffs, empty.median_first_reply, empty.ratings,
            empty.visitor_messages, empty.messages_by_hour) == (0, 0, 0, None, {}, 0, {})
    elsewhere = await other.site_activity(other_site, since="2026-03-01T00:00:00Z", until="2026-03-05T00:00:00Z")
    assert (elsewhere.conversations, elsewhere.visitor_messages) == (1, 1)
    # The questions that ended in a handoff: the visitor's last words before the first handoff.
    questions = await other.handoff_questions(site)
    assert [(q.question, q.relevance, q.handoff) for q in questions] == [
        ("Where is my order?", None, True), ("I want a person", 0.7, True), ("Can I return shoes?", 0.2, True)]
    assert questions[0].asked_at == "2026-03-03T14:20:00Z" and questions[0].session_id == "sess_activity0000004"
    assert await other.handoff_questions(site, limit=1) == questions[:1]
    assert await other.handoff_questions(other_site) == []


async def test_a_message_id_is_stored_once_per_conversation(store, other):
    site_id = await new_site(store)
    conv = await conversation_id(store, site_id)
    elsewhere = await conversation_id(store, site_id, "sess_conformance00000002")
    first = await store.add_message(conv, "visitor", "Hello", message_id="m_same")
    with pytest.raises(DuplicateMessageId):
        await other.add_message(conv, "visitor", "Hello", message_id="m_same")
    await store.add_message(elsewhere, "visitor", "Hello", message_id="m_same")  # another visitor
    assert (await other.get_visitor_message(conv, "m_same")).id == first.id
    await store.add_message(conv, "ai", "one", reply_to="m_same")
    latest = await other.add_message(conv, "ai", "two", reply_to="m_same")
    assert (await store.get_reply(conv, "m_same")).id == latest.id
    assert await store.get_reply(conv, "m_other") is None
    assert len(await store.list_messages(conv)) == 3


async def test_concurrent_writers_never_make_a_cursor_skip(store, other):
    """Two processes write into one conversation while a reader walks it by cursor: the reader
    sees every message exactly once, in id order."""
    conv = await conversation_id(store, await new_site(store))
    per_writer = 25

    async def write(handle: Store, name: str) -> None:
        for n in range(per_writer):
            await handle.add_message(conv, "operator", f"{name}{n}")

    seen: list[int] = []
    writers = asyncio.gather(write(store, "a"), write(other, "b"))

    async def read() -> None:
        cursor = 0
        deadline = time.monotonic() + 60
        while len(seen) < 2 * per_writer and time.monotonic() < deadline:
            batch = await other.list_messages(conv, after=cursor, limit=7)
            seen.extend(m.id for m in batch)
            cursor = batch[-1].id if batch else cursor

    await asyncio.gather(writers, read())
    everything = [m.id for m in await store.list_messages(conv, limit=200)]
    assert len(everything) == 2 * per_writer
    assert seen == everything


async def test_counts_by_site_session_and_role(store):
    shop, other_shop = await new_site(store, "Shop"), await new_site(store, "Other")
    since = "2000-01-01T00:00:00Z"
    a = await conversation_id(store, shop)
    b = await conversation_id(store, shop, "sess_conformance00000002")
    c = await conversation_id(store, other_shop)  # the same session id on another site
    for conv in (a, a, b, c):
        await store.add_message(conv, "ai", "x")
    await store.add_message(a, "visitor", "y")
    assert await store.count_messages(shop, since=since) == 4
    assert await store.count_messages(shop, since=since, role="ai") == 3
    assert await store.count_messages(shop, since=since, role="ai", session_id=SESSION) == 2
    assert await store.count_messages(other_shop, since=since) == 1
    assert await store.count_messages(shop, since="2999-01-01T00:00:00Z") == 0


async def test_sites_and_sessions_are_isolated(store):
    shop, other_shop = await new_site(store, "Shop"), await new_site(store, "Other")
    mine = await conversation_id(store, shop)
    theirs = await conversation_id(store, other_shop)
    assert mine != theirs
    await store.add_message(mine, "visitor", "private")
    assert await store.list_messages(theirs) == []
    await store.add_block(shop, "session", SESSION, None, None)
    assert await store.is_blocked(shop, session_id=SESSION, ip=None, email=None, now=time.time())
    assert not await store.is_blocked(other_shop, session_id=SESSION, ip=None, email=None, now=time.time())
    await store.add_proactive(shop, SESSION, "psst", "operator")
    assert await store.pending_proactive(other_shop, SESSION, now=time.time()) == []
    assert await store.pending_proactive(shop, "sess_conformance00000002", now=time.time()) == []


async def test_plain_values_only(store):
    site_id = await new_site(store)
    with pytest.raises(TypeError):
        await store.get_site_by_key({"$gt": ""})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.get_conversation(site_id, {"$ne": None})  # type: ignore[arg-type]


# -- blocks ---------------------------------------------------------------------------------------
async def test_blocks_match_session_ip_or_email_and_expire(store, other):
    site_id = await new_site(store)
    now = time.time()

    async def blocked(**who: str | None) -> bool:
        return await other.is_blocked(site_id, session_id=who.get("session", "sess_innocent000000000000"),
                                      ip=who.get("ip"), email=who.get("email"), now=now)

    await store.add_block(site_id, "ip", "203.0.113.9", None, "spam")
    await store.add_block(site_id, "email", "troll@example.com", now + 60, None)
    await store.add_block(site_id, "session", SESSION, now - 1, None)  # already lapsed
    assert await blocked(ip="203.0.113.9")
    assert await blocked(email="Troll@Example.com")
    assert not await blocked(session=SESSION)
    assert not await blocked(ip="203.0.113.10", email="friend@example.com")
    assert await store.remove_blocks(site_id, "ip", "203.0.113.9") == 1
    assert not await blocked(ip="203.0.113.9")
    assert await store.remove_blocks(site_id, "ip", "203.0.113.9") == 0


# -- proactive ------------------------------------------------------------------------------------
async def test_proactive_delivery_acknowledgement_and_rules_once(store, other):
    site_id = await new_site(store)
    now = time.time()
    first = await store.add_proactive(site_id, SESSION, "Hello!", "operator")
    later = await other.add_proactive(site_id, SESSION, "Need help with pricing?", "rule",
                                      rule_key="r1", deliver_at=now + 30)
    assert await store.add_proactive(site_id, SESSION, "again", "rule", rule_key="r1") is None
    second = await other.add_proactive(site_id, SESSION, "Still there?", "operator")
    assert first.id < later.id < second.id
    assert [m.content for m in await store.pending_proactive(site_id, SESSION, now=now)] == \
        ["Hello!", "Still there?"]
    assert await store.next_proactive_due(site_id, SESSION, now=now) == pytest.approx(now + 30)
    await other.ack_proactive(site_id, SESSION, second.id, now=now)  # the rule one was not due yet
    assert await store.pending_proactive(site_id, SESSION, now=now) == []
    due = await store.pending_proactive(site_id, SESSION, now=now + 31)
    assert [(m.id, m.sender) for m in due] == [(later.id, "rule")]
    assert await store.next_proactive_due(site_id, SESSION, now=now + 31) is None


async def test_a_site_is_renamed_and_its_key_rotated(store, other):
    site_id = await new_site(store)
    old = (await store.list_sites())[0].site_key
    site = await other.update_site(site_id, name="Renamed", allowed_origins=["https://a.example"],
                                   site_key="sk_rotated_key_0000000000000000")
    assert (site.name, site.allowed_origins) == ("Renamed", ["https://a.example"])
    assert await store.get_site_by_key(old) is None
    assert (await store.get_site_by_key("sk_rotated_key_0000000000000000")).settings == {"lang": "en"}


# -- privacy --------------------------------------------------------------------------------------
async def test_erasing_a_session_removes_it_and_its_events_and_keeps_others(store, other):
    site = await new_site(store)
    gone, kept = "sess_conformance_erased01", "sess_conformance_kept0001"
    cid = await conversation_id(store, site, gone)
    kept_id = await conversation_id(store, site, kept)
    await store.add_message(cid, "visitor", "secret words", message_id="m1")
    await store.add_message(cid, "visitor", "", message_id="m2", image_key="abcdefghijklmnopqrstuv.png")
    await store.add_message(kept_id, "visitor", "other words", message_id="m1")
    await store.add_note(cid, None, "Ana", "a note about them")
    await store.add_proactive(site, gone, "hello", "Ana")
    await store.add_block(site, "session", gone, None, None)
    await store.record_events([(f"session:{site}:{gone}", "message", {"session_id": gone}),
                               (f"site:{site}", "answer_progress", {"conversation_id": cid, "text": "x"}),
                               (f"site:{site}", "message", {"session_id": kept})], "p1")
    assert await other.erase_conversation(site, gone) == ["abcdefghijklmnopqrstuv.png"]
    assert await store.get_conversation(site, gone) is None
    assert await store.list_messages(cid) == [] and await store.list_notes(cid) == []
    assert await store.pending_proactive(site, gone, now=time.time() + 10) == []
    assert not await store.is_blocked(site, session_id=gone, ip=None, email=None, now=time.time())
    events = await store.events_since(0, exclude_origin="nobody", limit=10)
    assert [e.payload for e in events] == [{"session_id": kept}]
    assert [m.content for m in await store.list_messages(kept_id)] == ["other words"]
    assert await store.erase_conversation(site, gone) == []  # again: nothing, no error


async def test_contacts_and_ratings_are_listed_and_searched(store, other):
    site = await new_site(store)
    ana = await conversation_id(store, site, "sess_conformance_contact01")
    await conversation_id(store, site, "sess_conformance_nobody001")
    bob = await conversation_id(store, site, "sess_conformance_contact02")
    await store.update_conversation(ana, {"email": "ana@example.org", "contact_name": "Ana 100%"})
    await store.update_conversation(bob, {"phone": "+15550001", "rating": 4})
    assert {c.id for c in await other.list_contacts(site)} == {ana, bob}
    assert [c.id for c in await other.list_contacts(site, search="ANA")] == [ana]
    assert [c.id for c in await other.list_contacts(site, search="100%")] == [ana]
    assert await other.list_contacts(site, search="_") == []
    assert [c.id for c in await other.list_contacts(site, rated=True)] == [bob]


async def test_each_conversations_first_visitor_message_in_one_read(store, other):
    site = await new_site(store)
    talked = await conversation_id(store, site, "sess_conformance_first001")
    greeted = await conversation_id(store, site, "sess_conformance_first002")
    await store.add_message(talked, "ai", "Hello! How can I help?")
    await store.add_message(talked, "visitor", "Where is my order?")
    await store.add_message(talked, "visitor", "It is late")
    await store.add_message(greeted, "operator", "Need a hand?")
    assert await other.first_visitor_messages([talked, greeted, talked + 10_000]) == {
        talked: "Where is my order?"}
    assert await other.first_visitor_messages([]) == {}


async def test_stale_sessions_are_those_idle_since_a_time(store):
    site = await new_site(store)
    await conversation_id(store, site, "sess_conformance_stale001")
    assert await store.stale_sessions(site, updated_before="2000-01-01T00:00:00Z") == []
    assert await store.stale_sessions(site, updated_before="2999-01-01T00:00:00Z") == [
        "sess_conformance_stale001"]


# -- knowledge ------------------------------------------------------------------------------------
async def test_documents_and_their_version(store, other):
    site_id = await new_site(store)
    before = await store.knowledge_version(site_id)
    doc = await store.add_document(site_id, "Returns", "https://shop.test/r", "60 days")
    after_add = await other.knowledge_version(site_id)
    assert after_add != before
    assert [(d.id, d.title, d.url) for d in await other.list_documents(site_id)] == \
        [(doc.id, "Returns", "https://shop.test/r")]
    assert not await store.remove_document(site_id + 1000, doc.id)  # not another site's
    assert await store.remove_document(site_id, doc.id)
    assert await other.knowledge_version(site_id) not in (before, after_add)
    assert await store.list_documents(site_id) == []
    uploaded = await store.add_document(site_id, "Care", None, "Dry flat", file_name="care-guide.pdf")
    assert [(d.id, d.url, d.file_name) for d in await other.list_documents(site_id)] == \
        [(uploaded.id, None, "care-guide.pdf")]


async def test_fetch_jobs_are_written_by_one_process_and_read_by_another(store, other):
    site_id, elsewhere = await new_site(store), await new_site(store, "Other")
    job = await store.add_fetch_job(site_id, "https://shop.test/sitemap.xml", "A", now=1000.0, keep=3)
    assert (job.state, job.done, job.total, job.errors, job.started_at, job.updated_at) == \
        ("fetching", 0, 0, [], 1000.0, 1000.0)
    await store.update_fetch_job(site_id, job.id, {"done": 2, "total": 5, "errors": ["/a answered HTTP 404."]},
                                 now=1001.5)
    await store.update_fetch_job(elsewhere, job.id, {"state": "failed"}, now=1002.0)  # not that site's
    [seen] = await other.list_fetch_jobs(site_id)
    assert (seen.id, seen.url, seen.origin, seen.state, seen.done, seen.total, seen.errors, seen.updated_at) == \
        (job.id, "https://shop.test/sitemap.xml", "A", "fetching", 2, 5, ["/a answered HTTP 404."], 1001.5)
    await store.update_fetch_job(site_id, job.id, {"state": "done", "added": 4, "message": "added 4 page(s)"},
                                 now=1003.0)
    assert [(j.state, j.added, j.done) for j in await other.list_fetch_jobs(site_id)] == [("done", 4, 2)]
    with pytest.raises(ValueError):
        await store.update_fetch_job(site_id, job.id, {"url": "https://elsewhere.test/"}, now=1004.0)
    # Each site keeps its newest `keep` jobs, newest first; older ones are pruned.
    later = [await other.add_fetch_job(site_id, f"https://shop.test/{n}", "B", now=1010.0 + n, keep=3)
             for n in range(4)]
    await store.add_fetch_job(elsewhere, "https://other.test/", "A", now=1020.0, keep=3)
    assert [j.id for j in await store.list_fetch_jobs(site_id)] == [j.id for j in reversed(later[1:])]
    assert [j.url for j in await store.list_fetch_jobs(site_id, limit=1)] == ["https://shop.test/3"]
    assert [j.url for j in await other.list_fetch_jobs(elsewhere)] == ["https://other.test/"]


# -- answer claims --------------------------------------------------------------------------------
async def test_one_process_claims_an_answer_until_released_or_stale(store, other):
    conv = await conversation_id(store, await new_site(store))
    now = time.time()
    results = await asyncio.gather(store.claim_answer(conv, "m_1", "A", now=now, stale_after=60),
                                   other.claim_answer(conv, "m_1", "B", now=now, stale_after=60))
    assert sorted(results) == [False, True]
    holder, loser = ("A", "B") if results[0] else ("B", "A")
    assert await store.claim_answer(conv, "m_1", holder, now=now + 1, stale_after=60)  # renewed
    assert not await other.claim_answer(conv, "m_1", loser, now=now + 2, stale_after=60)
    assert await other.claim_answer(conv, "m_1", loser, now=now + 100, stale_after=60)  # stale
    await store.release_answer(conv, "m_1", holder)  # not the holder any more: no effect
    assert not await store.claim_answer(conv, "m_1", holder, now=now + 101, stale_after=60)
    await other.release_answer(conv, "m_1", loser)
    assert await store.claim_answer(conv, "m_1", holder, now=now + 102, stale_after=60)
    assert await store.claim_answer(conv, "m_2", loser, now=now, stale_after=60)  # another message


async def test_a_question_is_stored_with_its_events_and_claim(store, other):
    conv = await conversation_id(store, await new_site(store))
    now = time.time()
    start = await other.latest_event_id()

    def events(message):
        return [("session:t", "message", {"message_id": message.id}), ("site:t", "message", {})]

    message, claimed = await store.add_question(conv, "Hello?", message_id="m_q1", events=events,
                                                origin="A", claim=True, now=now, stale_after=60)
    assert claimed and message.role == "visitor" and message.content == "Hello?"
    assert (await other.get_visitor_message(conv, "m_q1")).id == message.id
    recorded = await other.events_since(start, exclude_origin="B", limit=10)
    assert [(e.topic, e.payload) for e in recorded] == [("session:t", {"message_id": message.id}),
                                                        ("site:t", {})]
    assert not await other.claim_answer(conv, "m_q1", "B", now=now, stale_after=60)  # A holds it
    with pytest.raises(DuplicateMessageId):
        await other.add_question(conv, "Hello?", message_id="m_q1", events=events, origin="B",
                                 claim=True, now=now, stale_after=60)
    assert len(await store.events_since(start, exclude_origin="B", limit=10)) == 2
    _, claimed = await store.add_question(conv, "Again", message_id="m_q2", events=events,
                                          origin="A", claim=False, now=now, stale_after=60)
    assert not claimed and await other.claim_answer(conv, "m_q2", "B", now=now, stale_after=60)


async def test_an_answer_ends_with_its_reply_handoff_events_and_release_in_one_call(store, other):
    site_id = await new_site(store)
    conv = await conversation_id(store, site_id)
    now = time.time()
    start = await other.latest_event_id()
    assert await store.claim_answer(conv, "m_f1", "A", now=now, stale_after=60)

    def events(reply):
        told = [("session:t", "message", {"message_id": reply.id})] if reply else []
        return told + [("site:t", "handoff", {"reason": "ai_handed_over"})]

    source = Source(title="Shipping", url="https://s/shipping")
    reply = await store.finish_answer(conv, "m_f1", "A", role="ai", content="We ship in 2 days.",
                                      sources=[source], status="complete", usage={"total_tokens": 9},
                                      relevance=0.75, handoff="ai_handed_over", events=events)
    assert reply is not None and reply.role == "ai" and reply.reply_to == "m_f1"
    stored = await other.get_reply(conv, "m_f1")
    assert (stored.id, stored.content, stored.status) == (reply.id, "We ship in 2 days.", "complete")
    assert stored.sources == [source] and stored.usage == {"total_tokens": 9}
    assert stored.relevance == pytest.approx(0.75)
    handed = await other.get_conversation(site_id, SESSION)
    assert (handed.handoff, handed.handoff_reason) == (True, "ai_handed_over")
    recorded = await other.events_since(start, exclude_origin="B", limit=10)
    assert [(e.topic, e.kind, e.payload) for e in recorded] == [
        ("session:t", "message", {"message_id": reply.id}), ("site:t", "handoff", {"reason": "ai_handed_over"})]
    assert await other.claim_answer(conv, "m_f1", "B", now=now, stale_after=60)  # released

    # An answer that ended before any text: no reply, no handoff, the claim released all the same.
    assert await store.claim_answer(conv, "m_f2", "A", now=now, stale_after=60)
    assert await store.finish_answer(conv, "m_f2", "A", role="ai", content=None, status="interrupted",
                                     handoff=None, events=lambda reply: []) is None
    assert await other.get_reply(conv, "m_f2") is None
    assert await other.claim_answer(conv, "m_f2", "B", now=now, stale_after=60)
    # Another process's claim is not released by this one's end.
    assert await store.finish_answer(conv, "m_f1", "A", role="ai", content="Again", handoff=None,
                                     events=lambda reply: []) is not None
    assert not await store.claim_answer(conv, "m_f1", "A", now=now, stale_after=60)


async def test_claims_are_renewed_together(store, other):
    conv = await conversation_id(store, await new_site(store))
    now = time.time()
    assert await store.claim_answer(conv, "m_r1", "A", now=now, stale_after=60)
    assert await other.claim_answer(conv, "m_r2", "B", now=now, stale_after=60)
    # A keeps its own, cannot take B's fresh one, and takes a new one.
    assert await store.renew_claims([(conv, "m_r1"), (conv, "m_r2"), (conv, "m_r3")], "A",
                                    now=now + 1, stale_after=60) == [True, False, True]
    assert not await other.claim_answer(conv, "m_r1", "B", now=now + 30, stale_after=60)
    # Past the stale limit B's claim is A's for the taking.
    assert await store.renew_claims([(conv, "m_r2")], "A", now=now + 100, stale_after=60) == [True]
    assert await store.renew_claims([], "A", now=now, stale_after=60) == []


async def test_a_retry_elsewhere_notes_that_it_follows_an_answer(store, other):
    site_id = await new_site(store)
    conv = await conversation_id(store, site_id)
    now = time.time()
    for message_id in ("m_f1", "m_f2"):
        assert await store.claim_answer(conv, message_id, "A", now=now, stale_after=60)
    await other.follow_answer(conv, "m_f2", now=now + 5)
    await other.follow_answer(conv, "m_none", now=now + 5)  # nobody's claim: nothing to note
    claims = [(conv, "m_f1"), (conv, "m_f2"), (conv, "m_none")]
    assert await store.followed_answers(claims, since=now + 1) == [False, True, False]
    assert await store.followed_answers(claims, since=now + 6) == [False, False, False]  # long ago
    assert await store.followed_answers([], since=now) == []


async def test_a_question_is_taken_in_one_call_with_its_guards_and_history(store, other):
    site_id = await new_site(store)
    now = time.time()
    start = await other.latest_event_id()
    befores = []

    def events(before, message):
        befores.append(before)
        return [("session:t", "message", {"message_id": message.id})]

    def take(session_id, message_id, text="Hello?", *, ip="203.0.113.9", changes=lambda c: {},
             replies_since=None):
        return store.take_question(site_id, session_id, text, message_id=message_id,
                                   context={"lang": "fr", "ip": ip}, changes=changes, ip=ip,
                                   events=events, origin="A", now=now, stale_after=60, history=5,
                                   replies_since=replies_since)

    first = await take(SESSION, "m_t1", changes=lambda c: {"last_seen_at": now, "page_url": "https://s/a"})
    conversation = first.conversation
    assert not first.blocked and first.claimed and first.history == []
    assert first.message.content == "Hello?" and first.message.message_id == "m_t1"
    assert conversation.lang == "fr" and conversation.page_url == "https://s/a"
    assert conversation.last_seen_at == pytest.approx(now)
    assert befores[0].last_seen_at is None  # events see the conversation as it was
    stored = await other.get_conversation(site_id, SESSION)
    assert stored.page_url == "https://s/a" and stored.last_seen_at == pytest.approx(now)
    assert not await other.claim_answer(conversation.id, "m_t1", "B", now=now, stale_after=60)
    assert [e.payload for e in await other.events_since(start, exclude_origin="B", limit=10)] == [
        {"message_id": first.message.id}]

    second = await take(SESSION, "m_t2", "And shipping?")
    assert [m.content for m in second.history] == ["Hello?"] and second.message.content == "And shipping?"
    # With the message: what its answer checks first (the session's replies, the knowledge's version).
    assert first.ai_replies is None and first.knowledge_version == await other.knowledge_version(site_id)
    await store.add_message(conversation.id, "ai", "Free over 50 euros.")
    await store.add_document(site_id, "Shipping", None, "Free over 50 euros.")
    counted = await take(SESSION, "m_t2b", "And returns?", replies_since="2000-01-01T00:00:00Z")
    assert counted.ai_replies == 1 and counted.knowledge_version == await other.knowledge_version(site_id)
    assert counted.knowledge_version != first.knowledge_version
    assert (await take(SESSION, "m_t2c", "Thanks", replies_since="2999-01-01T00:00:00Z")).ai_replies == 0

    retry = await take(SESSION, "m_t2", "And shipping?", changes=lambda c: {"page_url": "https://s/b"})
    assert retry.message is None and not retry.blocked and not retry.claimed
    assert retry.conversation.page_url == "https://s/b"
    assert len(await other.list_messages(conversation.id)) == 5
    assert len(await other.events_since(start, exclude_origin="B", limit=10)) == 4

    await store.update_conversation(conversation.id, {"mode": "operator"})
    taken_over = await take(SESSION, "m_t3", "Anyone?")
    assert taken_over.message.content == "Anyone?" and not taken_over.claimed
    assert await other.claim_answer(conversation.id, "m_t3", "B", now=now, stale_after=60)

    # Blocked by session, address or the conversation's email: nothing is written at all.
    await store.add_block(site_id, "session", "sess_blocked0000000001", None, None)
    await store.add_block(site_id, "ip", "198.51.100.7", None, None)
    await store.add_block(site_id, "email", "spam@example.com", None, None)
    for session_id, ip in (("sess_blocked0000000001", None), ("sess_fromblockedip0001", "198.51.100.7")):
        refused = await take(session_id, "m_b1", ip=ip)
        assert refused.blocked and refused.message is None
        assert await other.get_conversation(site_id, session_id) is None
    await store.update_conversation(conversation.id, {"email": "Spam@Example.com"})
    refused = await take(SESSION, "m_b2")
    assert refused.blocked and await other.get_visitor_message(conversation.id, "m_b2") is None
    assert len(await other.events_since(start, exclude_origin="B", limit=10)) == 5


# -- events ---------------------------------------------------------------------------------------
async def test_events_in_order_without_our_own_and_pruned(store, other):
    start = await store.latest_event_id()
    ids = [await store.record_event("session:1:s", "message", {"n": n}, "A") for n in range(3)]
    ids.append(await other.record_event("site:1", "contact", {"n": 3}, "B"))
    assert ids == sorted(ids) and await other.latest_event_id() == ids[-1]
    seen = await other.events_since(start, exclude_origin="B", limit=10)
    assert [(e.id, e.topic, e.kind, e.payload, e.origin) for e in seen] == \
        [(ids[n], "session:1:s", "message", {"n": n}, "A") for n in range(3)]
    assert [e.id for e in await store.events_since(ids[0], exclude_origin="", limit=2)] == ids[1:3]
    assert [e.id for e in await store.events_by_id([ids[3], ids[1], 10**9])] == [ids[1], ids[3]]
    assert await store.prune_events(time.time() - 3600) == 0  # retention keeps recent events
    assert await store.prune_events(time.time() + 1) == 4
    assert await other.events_since(start, exclude_origin="", limit=10) == []


async def test_events_of_one_write_are_recorded_together_in_order(store, other):
    start = await store.latest_event_id()
    ids = await store.record_events([("session:1:s", "message", {"n": 1}),
                                     ("site:1", "message", {"n": 1, "session_id": "s"})], "A")
    assert len(ids) == 2 and ids[0] < ids[1]
    seen = await other.events_since(start, exclude_origin="B", limit=10)
    assert [(e.id, e.topic, e.payload) for e in seen] == [
        (ids[0], "session:1:s", {"n": 1}), (ids[1], "site:1", {"n": 1, "session_id": "s"})]
    many = await other.record_events([("site:1", "seen", {"n": n}) for n in range(250)], "B")
    assert len(many) == 250 and many == sorted(many) and many[0] > ids[1]
    stored = await store.events_by_id(many)  # sorted here: the stand-in orders 250 ids as text
    assert sorted((e.id, e.payload["n"]) for e in stored) == [(i, n) for n, i in enumerate(many)]


async def test_the_feed_wakes_a_subscriber_of_another_process(stores):
    """An event recorded by one process reaches a subscriber held by another within a second."""
    store, other = stores
    listener, speaker = Hub(store), Hub(other)
    feed = build_feed(listener, store, poll_interval=0.05)
    try:
        async with listener.subscribe("session:1:sess_x") as subscription:
            started = time.monotonic()
            await speaker.publish("session:1:sess_x", "message", {"message_id": 7})
            assert await subscription.wait(5)
            assert time.monotonic() - started < 4  # 50 ms polls; loose for a loaded machine
            assert subscription.drain() == [{"kind": "message", "message_id": 7}]
            await listener.publish("session:1:sess_x", "mine", {})  # delivered here, once
            assert await subscription.wait(5)
            assert subscription.drain() == [{"kind": "mine"}]
            assert not await subscription.wait(0.3)  # and the feed does not bring it back
            assert feed.healthy
    finally:
        await feed.stop()


# -- the dashboard's records ----------------------------------------------------------------------
async def test_operators_sessions_and_failures(store: Store, other: Store):
    from server.store.base import DuplicateOperator
    from server.store.models import OperatorSession

    site_id = await new_site(store)
    ana = await store.create_operator("ana@example.com", "Ana", "agent", "hash-1", [site_id])
    with pytest.raises(DuplicateOperator):
        await other.create_operator("ana@example.com", "Ana again", "admin", "hash-2")
    assert (await other.get_operator_by_email("ana@example.com")).site_ids == (site_id,)
    await other.update_operator(ana.id, {"disabled": True, "recovery_codes": ["r1", "r2"]})
    changed = await store.get_operator(ana.id)
    assert changed.disabled and changed.recovery_codes == ("r1", "r2")
    await store.set_operator_sites(ana.id, [])
    assert (await other.get_operator(ana.id)).site_ids == ()
    assert await store.count_operators() == 1 and len(await other.list_operators()) == 1

    now = time.time()
    await store.create_operator_session(OperatorSession("h1", ana.id, now, now, "1.2.3.4", "UA", False))
    await other.touch_operator_session("h1", now + 5, second_factor_done=True)
    session = await store.get_operator_session("h1")
    assert session.last_seen == pytest.approx(now + 5) and session.second_factor_done
    assert await other.delete_operator_sessions(operator_id=ana.id) == 1
    assert await store.get_operator_session("h1") is None

    await store.record_login_failure(["account:ana", "address:1.2.3.4"], now)
    await other.record_login_failure(["account:ana"], now)
    assert await store.count_login_failures("account:ana", now - 1) == 2
    assert await store.count_login_failures("account:ana", now + 1) == 0
    await other.clear_login_failures("account:ana")
    assert await store.count_login_failures("account:ana", 0) == 0
    assert await store.count_login_failures("address:1.2.3.4", 0) == 1
    assert await other.prune_login_failures(now - 60) == 0
    assert await other.prune_login_failures(now + 1) == 1
    assert await store.count_login_failures("address:1.2.3.4", 0) == 0

    await store.add_setup_token("t1", now + 60)
    assert await other.use_setup_token("t1", now, consume=False)
    results = await asyncio.gather(store.use_setup_token("t1", now), other.use_setup_token("t1", now))
    assert sorted(results) == [False, True]  # single use, even when two race


async def test_operators_present_are_seen_from_another_process(store: Store, other: Store):
    """Who is online, for opening hours: a session used or said present recently, past its
    second factor, each operator once; a session signed out is gone at once."""
    from server.store.models import OperatorSession

    ana = await store.create_operator("ana@example.com", "Ana", "admin", "hash-1")
    bo = await store.create_operator("bo@example.com", "Bo", "agent", "hash-2")
    cy = await store.create_operator("cy@example.com", "Cy", "agent", "hash-3")
    now = time.time()
    await store.create_operator_session(OperatorSession("a1", ana.id, now - 900, now - 900, None, None))
    await store.create_operator_session(OperatorSession("a2", ana.id, now - 10, now - 10, None, None))
    await store.create_operator_session(OperatorSession("b1", bo.id, now - 900, now - 900, None, None))
    await store.create_operator_session(OperatorSession("c1", cy.id, now, now, None, None, False))
    assert await other.operators_present(since=now - 120) == [ana.id]  # Cy has no second factor yet
    await other.mark_operator_present("b1", now)  # Bo's tab still has its live feed open
    assert (await store.get_operator_session("b1")).present_at == pytest.approx(now)
    assert await store.operators_present(since=now - 120) == [ana.id, bo.id]
    assert await store.operators_present(since=now + 1) == []
    await other.delete_operator_sessions(token_hash="b1")  # signed out
    assert await store.operators_present(since=now - 120) == [ana.id]

    # Who may answer one site: admins, and the enabled agents assigned to it.
    shop, elsewhere = await new_site(store), await new_site(store, "Elsewhere")
    dee = await store.create_operator("dee@example.com", "Dee", "agent", "hash-4", [shop])
    eve = await store.create_operator("eve@example.com", "Eve", "agent", "hash-5", [elsewhere])
    for operator in (dee, eve):
        await store.create_operator_session(OperatorSession(f"s{operator.id}", operator.id, now, now, None, None))
    assert await other.operators_present(since=now - 120, site_id=shop) == [ana.id, dee.id]
    assert await other.operators_present(since=now - 120, site_id=elsewhere) == [ana.id, eve.id]
    assert await other.operators_present(since=now - 120, site_id=shop, limit=1) == [ana.id]
    await store.update_operator(ana.id, {"disabled": True})
    assert await other.operators_present(since=now - 120, site_id=shop) == [dee.id]
    assert len(await other.operators_present(since=now - 120)) == 3  # without a site: anyone


async def test_opening_hours_are_kept_in_the_site_settings(store: Store, other: Store):
    from server.opening_hours import SETTING, OpeningHours, site_hours

    site_id = await new_site(store)
    hours = OpeningHours.parse({"time_zone": "Europe/Paris", "available_when": "both",
                                "weekly": {"mon": "09:00-12:00, 13:00-17:00", "sat": "10:00-13:00"},
                                "closed_dates": "2026-12-24..2026-12-26\n2027-01-01",
                                "away_message": "Back on Monday."})
    await other.update_site_settings(site_id, hours.settings_changes())
    site = await store.get_site_by_key("sk_shop" + "_" * 26)
    assert site is not None and site_hours(site) == hours and site.settings["lang"] == "en"
    assert site.settings["timezone"] == "Europe/Paris" and SETTING in site.settings


async def test_the_inbox_notes_and_the_feed_of_a_site(store: Store, other: Store):
    site_id = await new_site(store)
    other_site = await new_site(store, "Elsewhere")
    browsing = await conversation_id(store, site_id, "sess_conformance00000002")  # no message
    chatting = await conversation_id(store, site_id)
    await other.add_message(chatting, "visitor", "Where is my parcel, Montréal?")
    await store.add_message(chatting, "ai", "On its way.")
    inbox = await other.list_inbox([site_id])
    assert [e.conversation.id for e in inbox] == [chatting]
    assert inbox[0].unread == 1 and inbox[0].last_message.content == "On its way."
    assert [e.conversation.id for e in await store.list_inbox([site_id], search="parcel")] == [chatting]
    assert await store.list_inbox([site_id], search="nowhere") == []
    assert await store.list_inbox([other_site]) == []
    await store.update_conversation(chatting, {"closed": True, "assignee_id": 7})
    assert await other.list_inbox([site_id]) == []
    assert [e.conversation.id for e in await other.list_inbox([site_id], status="closed")] == [chatting]
    await store.update_conversation(chatting, {"closed": False, "last_seen_at": time.time()})
    assert [e.conversation.id for e in await other.list_inbox([site_id], status="mine",
                                                               operator_id=7)] == [chatting]
    assert await other.list_inbox([site_id], status="unassigned") == []
    online = await other.visitors_online([site_id], since=time.time() - 60)
    assert [c.id for c in online] == [chatting] and browsing not in [c.id for c in online]

    note = await store.add_note(chatting, 7, "Ana", "VIP")
    assert [n.content for n in await other.list_notes(chatting)] == ["VIP"] and note.author == "Ana"

    first = await store.record_event(f"site:{site_id}", "message", {"n": 1}, "a")
    await store.record_event(f"site:{other_site}", "message", {"n": 2}, "a")
    await other.record_event(f"site:{site_id}", "handoff", {"n": 3}, "b")
    feed = await other.events_for_topics(0, (f"site:{site_id}",), limit=10)
    assert [e.payload["n"] for e in feed] == [1, 3]
    assert await store.oldest_event_id() == first

    await store.add_audit(operator_id=7, operator_email="ana@example.com", action="takeover",
                          site_id=site_id, target="sess_x", detail={"why": "test"}, ip="1.2.3.4")
    [entry] = await other.list_audit()
    assert entry.action == "takeover" and entry.detail == {"why": "test"}

    saved = await store.save_canned_reply(site_id, "hello", "Hi there!")
    await other.save_canned_reply(site_id, "hello", "Hello!")
    assert [(c.shortcut, c.content) for c in await store.list_canned_replies(site_id)] == [("hello", "Hello!")]
    assert await other.remove_canned_reply(site_id, saved.id)


async def test_concurrent_settings_changes_are_all_kept(store, other):
    site_id = await new_site(store)
    await asyncio.gather(*(handle.update_site_settings(site_id, {f"key{n}": n % 2 == 0})
                           for n, handle in enumerate([store, other] * 4)))
    settings = (await other.get_site_by_key("sk_shop" + "_" * 26)).settings
    assert {k: v for k, v in settings.items() if k.startswith("key")} == \
        {f"key{n}": n % 2 == 0 for n in range(8)}
    assert all(isinstance(v, bool) for k, v in settings.items() if k.startswith("key"))


async def test_a_feed_stops_at_once_even_right_after_it_started(store):
    hub = Hub(store)
    feed = build_feed(hub, store, poll_interval=0.05)
    async with hub.subscribe("session:1:sess_x"):
        pass
    await asyncio.wait_for(feed.stop(), 5)  # a driver that swallows the cancel must not hang it


async def test_each_inbox_row_has_its_own_last_message_and_unread_count(store, other):
    site_id = await new_site(store)
    rows = {}
    for n in range(3):
        cid = await conversation_id(store, site_id, f"sess_conformance_unread{n:03d}")
        first = await store.add_message(cid, "visitor", f"question {n}")
        for k in range(n):
            await store.add_message(cid, "visitor", f"more {n}.{k}")
        await store.add_message(cid, "ai", f"answer {n}")
        if n == 2:  # an operator read the first of its visitor's messages
            await store.update_conversation(cid, {"read_through": first.id})
        rows[cid] = n
    inbox = await other.list_inbox([site_id])
    assert {e.conversation.id: (e.last_message.content, e.unread) for e in inbox} == {
        cid: (f"answer {n}", n + 1 - (n == 2)) for cid, n in rows.items()}


async def test_inbox_pages_reach_every_conversation_when_many_share_a_time(store, other, store_clock):
    site_id = await new_site(store)
    conversations = []
    for n in range(7):  # one second, seven conversations: the time alone cannot say where a page ends
        conversation = await conversation_id(store, site_id, f"sess_paging{n:014d}")
        await other.add_message(conversation, "visitor", f"Question {n}")
        conversations.append(conversation)
    seen: list[int] = []
    before = None
    for _ in range(10):
        page = await other.list_inbox([site_id], limit=3, before=before)
        if not page:
            break
        seen += [e.conversation.id for e in page]
        before = (page[-1].conversation.updated_at, page[-1].conversation.id)
    assert seen == sorted(conversations, reverse=True)


async def test_inbox_finds_one_visitor_by_email_or_session_id(store, other):
    site_id = await new_site(store)
    jane = await conversation_id(store, site_id, "sess_jane000000000000001")
    bob = await conversation_id(store, site_id, "sess_bob0000000000000001")
    for conversation in (jane, bob):
        await other.add_message(conversation, "visitor", "Hello")
    await store.update_conversation(jane, {"email": "Jane@example.com"})  # as typed, domain lower-cased
    for visitor in ("jane@example.com", "sess_jane000000000000001"):
        assert [e.conversation.id for e in await other.list_inbox([site_id], visitor=visitor)] == [jane]
    assert await other.list_inbox([site_id], visitor="nobody@example.com") == []


async def test_inbox_search_ignores_case_and_accents_and_matches_word_starts(store, other):
    site_id = await new_site(store)
    conv = await conversation_id(store, site_id)
    await other.add_message(conv, "visitor", "Where is my parcel, Montréal?")
    for query, found in (("montreal", True), ("PARC", True), ("MONTRÉAL parcel", True), ("arcel", False),
                         ("parcel london", False), ('parc "', True)):
        assert [e.conversation.id for e in await store.list_inbox([site_id], search=query)] == \
            ([conv] if found else []), query
