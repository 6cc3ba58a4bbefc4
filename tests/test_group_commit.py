"""Operator messages queued for SQLite's writer share a transaction (group commit), and each still
succeeds or fails on its own: one that fails leaves nothing behind and takes no other with it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from server.store.groups import GroupCommit
from server.store.models import Message
from server.store.sqlite import SQLiteStore
from server.store.threads import StoreThreads
from tests.waiting import Blocker, eventually


@pytest.fixture
async def store(tmp_path):
    store = SQLiteStore(tmp_path / "parley.sqlite3")
    await store.open()
    yield store
    await store.close()


async def queued_for_the_writer(store: SQLiteStore, count: int) -> None:
    """Until `count` writes wait for the next group (the writer is held meanwhile)."""
    groups = store._groups
    assert groups is not None
    await eventually(lambda: len(groups._calls) == count, what=f"{count} writes queued for one group")


async def hold_the_writer(store: SQLiteStore) -> tuple[threading.Event, asyncio.Future]:
    """Keeps the writer thread busy until the event is set, so that what is written meanwhile
    queues up and goes in one group."""
    busy = Blocker()
    holding = asyncio.ensure_future(store._run(busy))
    await busy.running()
    return busy.release, holding


@pytest.mark.parametrize("writer", ["busy", "idle"])
async def test_a_failing_message_in_a_group_fails_alone_and_leaves_nothing(store, writer):
    """Written together while the writer thread is busy, the messages wait for it as one group;
    while it is idle, the event loop writes them as one group at once (they are small)."""
    site = await store.create_site("sk_group_commit_test_key_000001", "Shop", [], {"lang": "en"})
    commits_before = store._commits
    if writer == "busy":
        release, holding = await hold_the_writer(store)

    written_on: set[str] = set()

    def events_for(n: int):
        def events(message: Message):  # called inside the transaction
            written_on.add(threading.current_thread().name)
            if n == 3:
                raise ValueError("no events for this one")
            return [(f"session:{site.id}:sess_{n:020d}", "message", {"message_id": message.id})]
        return events

    writes = [asyncio.ensure_future(store.add_operator_message(
        site.id, f"sess_{n % 2:020d}", f"text {n}", operator_name="Ann", events=events_for(n),
        origin="here")) for n in range(8)]
    if writer == "busy":
        await queued_for_the_writer(store, 8)
        release.set()
        await holding
    outcomes = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 30)

    assert store._commits - commits_before == 1  # one transaction for the seven (after a rollback)
    assert written_on == {"sqlite-write_0" if writer == "busy" else threading.current_thread().name}
    assert isinstance(outcomes[3], ValueError)
    stored = [o for n, o in enumerate(outcomes) if n != 3]
    assert all(isinstance(m, Message) for m in stored)
    assert [m.id for m in stored] == sorted(m.id for m in stored)  # in the order they were given
    for session in (0, 1):
        _, messages = await store.conversation_messages(site.id, f"sess_{session:020d}")
        assert [m.content for m in messages] == [f"text {n}" for n in range(session, 8, 2) if n != 3]
    assert len(await store.events_since(0, exclude_origin="", limit=100)) == 7  # none for the failed one


async def test_a_write_given_up_before_its_group_runs_is_not_made(store):
    site = await store.create_site("sk_group_commit_test_key_000002", "Shop", [], {"lang": "en"})
    release, holding = await hold_the_writer(store)
    writes = [asyncio.ensure_future(store.add_operator_message(
        site.id, "sess_00000000000000000000", f"text {n}", operator_name="Ann",
        events=lambda message: [], origin="here")) for n in range(3)]
    await queued_for_the_writer(store, 3)
    writes[1].cancel()
    release.set()
    await holding
    await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 30)
    _, messages = await store.conversation_messages(site.id, "sess_00000000000000000000")
    assert [m.content for m in messages] == ["text 0", "text 2"]


async def test_when_the_transaction_itself_fails_every_write_in_it_says_so():
    threads = StoreThreads("test", 1)

    def transaction(body):
        raise OSError("disk I/O error")

    groups = GroupCommit(threads, transaction)
    outcomes = await asyncio.wait_for(asyncio.gather(
        *[groups.submit(lambda db: "written") for _ in range(5)], return_exceptions=True), 30)
    assert all(isinstance(o, OSError) for o in outcomes)
    await asyncio.to_thread(threads.shutdown)


async def test_more_writes_than_a_group_takes_are_all_made():
    from server.store.groups import GROUP_MAX

    threads = StoreThreads("test", 1)
    groups_run: list[int] = []

    def transaction(body):
        results = body(None)
        groups_run.append(len(results))
        return results

    groups = GroupCommit(threads, transaction)
    count = GROUP_MAX * 3 + 5
    results = await asyncio.wait_for(asyncio.gather(
        *[groups.submit(lambda db, n=n: n) for n in range(count)]), 30)
    assert results == list(range(count))
    assert max(groups_run) <= GROUP_MAX and sum(groups_run) == count
    await asyncio.to_thread(threads.shutdown)


async def test_questions_queued_together_share_a_group_and_a_blocked_one_writes_nothing(store):
    site = await store.create_site("sk_group_commit_test_key_000003", "Shop", [], {"lang": "en"})
    await store.add_block(site.id, "ip", "203.0.113.9", None, "spam")
    release, holding = await hold_the_writer(store)

    def ask(n: int, ip: str):
        return asyncio.ensure_future(store.take_question(
            site.id, f"sess_{n:020d}", f"question {n}", message_id=f"m_q{n}", context={"ip": ip},
            changes=lambda conversation: {}, ip=ip, origin="here", now=0.0, stale_after=60,
            history=5, events=lambda conversation, message: [
                (f"session:{site.id}:sess_{n:020d}", "message", {"message_id": message.id})]))

    questions = [ask(n, "203.0.113.9" if n == 2 else "198.51.100.7") for n in range(5)]
    await queued_for_the_writer(store, 5)
    release.set()
    await holding
    taken = await asyncio.wait_for(asyncio.gather(*questions), 30)

    assert taken[2].blocked and taken[2].message is None
    assert await store.get_conversation(site.id, f"sess_{2:020d}") is None  # not even the conversation
    for n in (0, 1, 3, 4):
        assert not taken[n].blocked and taken[n].claimed and taken[n].message.content == f"question {n}"
    assert len(await store.events_since(0, exclude_origin="", limit=100)) == 4


async def test_writes_of_one_kind_queued_together_share_one_call_and_a_failing_one_fails_alone():
    threads = StoreThreads("test", 1)
    calls: list[list[int]] = []

    def write_many(db, items):
        calls.append(list(items))
        if 3 in items:
            raise ValueError("not three")
        return [item * 10 for item in items]

    def transaction(body):
        return body(None)

    groups = GroupCommit(threads, transaction)
    busy = Blocker()
    holding = threads.submit(busy)
    await busy.running()
    writes = [groups.submit_batched(write_many, n) for n in range(3)]
    plain = groups.submit(lambda db: "plain")
    writes += [groups.submit_batched(write_many, n) for n in range(3, 6)]
    busy.release.set()
    await holding
    outcomes = await asyncio.wait_for(asyncio.gather(*writes, plain, return_exceptions=True), 30)

    assert outcomes[:3] == [0, 10, 20] and outcomes[6] == "plain"
    assert isinstance(outcomes[3], ValueError) and outcomes[4:6] == [40, 50]
    # One call for each side of the plain write. The group is rolled back when one fails and runs
    # again: the failing batch split, each of its items alone, then without the one that failed.
    assert calls == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3], [0, 1, 2], [4], [5]]
    await asyncio.to_thread(threads.shutdown)


async def test_operator_messages_written_together_each_know_the_one_before_them(store):
    site = await store.create_site("sk_group_commit_test_key_000004", "Shop", [], {"lang": "en"})
    earlier = await store.add_operator_message(site.id, "sess_00000000000000000000", "before",
                                               operator_name="Ann", events=lambda m: [], origin="here")
    release, holding = await hold_the_writer(store)
    followed: dict[int, tuple[int, str]] = {}

    def write(n: int):
        return asyncio.ensure_future(store.add_operator_message(
            site.id, f"sess_{n % 2:020d}", f"text {n}", operator_name="Ann",
            events=lambda message: [("t", "message", {"id": message.id})], origin="here",
            following=lambda previous, mode: followed.__setitem__(n, (previous, mode))))

    writes = [write(n) for n in range(4)]
    await queued_for_the_writer(store, 4)
    release.set()
    await holding
    stored = await asyncio.wait_for(asyncio.gather(*writes), 30)

    assert [m.id for m in stored] == sorted(m.id for m in stored)
    assert followed == {0: (earlier.id, "ai"), 1: (0, "ai"), 2: (stored[0].id, "ai"), 3: (stored[1].id, "ai")}
    for session in (0, 1):
        conversation, messages = await store.conversation_messages(site.id, f"sess_{session:020d}")
        assert messages[-2:] == [stored[session], stored[session + 2]]
        assert conversation.first_operator_at == messages[0].created_at
    recorded = await store.events_since(0, exclude_origin="", limit=100)
    assert [e.payload["id"] for e in recorded] == [m.id for m in stored]  # "before" had none


async def test_answers_ending_together_share_a_group_and_each_is_stored(store):
    site = await store.create_site("sk_group_commit_test_key_000005", "Shop", [], {"lang": "en"})
    conversations = [await store.ensure_conversation(site.id, f"sess_{n:020d}", {}) for n in range(3)]
    release, holding = await hold_the_writer(store)
    finishing = [asyncio.ensure_future(store.finish_answer(
        conversation.id, f"m_q{n}", "here", role="ai", content=f"answer {n}",
        handoff="ai_failed" if n == 1 else None,
        events=lambda reply: [("topic", "message", {"message_id": reply.id if reply else 0})]))
        for n, conversation in enumerate(conversations)]
    await queued_for_the_writer(store, 3)
    release.set()
    await holding
    replies = await asyncio.wait_for(asyncio.gather(*finishing), 30)

    assert [reply.content for reply in replies] == ["answer 0", "answer 1", "answer 2"]
    for conversation, reply in zip(conversations, replies):
        assert await store.get_reply(conversation.id, reply.reply_to) == reply
    assert [c.handoff for c in [await store.get_conversation(site.id, f"sess_{n:020d}") for n in range(3)]] \
        == [False, True, False]
    assert len(await store.events_since(0, exclude_origin="", limit=100)) == 3


async def test_small_writes_wait_for_another_processs_write_lock_on_the_writer_thread_not_the_loop(tmp_path):
    """The event loop writes small groups itself while the writer thread is idle, but never waits
    for the write lock there: every visitor would wait with it."""
    store = SQLiteStore(tmp_path / "parley.sqlite3", busy_timeout_ms=60_000)
    await store.open()
    other_process = sqlite3.connect(store.path, isolation_level=None)
    try:
        site = await store.create_site("sk_group_commit_test_key_000006", "Shop", [], {"lang": "en"})
        other_process.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(store.add_operator_message(
            site.id, "sess_00000000000000000000", "after the lock", operator_name="Ann",
            events=lambda message: [], origin="here"))
        # Handed to the writer thread, which waits for the lock: at once, unless the event loop
        # itself waited for it (the store's busy timeout, 60 s, three times this bound).
        executor = store._executor
        assert executor is not None
        started = time.monotonic()
        await eventually(lambda: not executor.idle, timeout=20, what="the write waiting on the writer thread")
        assert time.monotonic() - started < 20, "the event loop waited for another process's write lock"
        assert not write.done()
        other_process.execute("COMMIT")
        message = await asyncio.wait_for(write, 30)
        _, messages = await store.conversation_messages(site.id, "sess_00000000000000000000")
        assert messages == [message]
    finally:
        other_process.close()
        await store.close()
