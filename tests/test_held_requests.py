"""Held reads (`wait=`): woken by the hub within milliseconds, by other processes within a second."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import httpx

from server.feed import PollingFeed
from server.hub import session_topic
from tests.harness import session
from tests.waiting import eventually

SID = session("held")
ROOT = Path(__file__).resolve().parent.parent


async def wait_until(condition, timeout: float = 10.0) -> None:
    await eventually(condition, timeout=timeout)


# Wake-ups take milliseconds (scripts/bench prints them); the bounds here are loose on purpose, so
# they hold on a loaded CI machine while still telling a wake from a wait running out (10 s, 20 s).
async def test_a_held_operator_messages_request_wakes_at_once(parley):
    hub = parley.services.hub
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=10))
    await wait_until(lambda: hub.subscriber_count == 1)
    sent_at = time.monotonic()
    await parley.services.operators.say(parley.site, SID, "Hello from Ana", operator_name="Ana")
    response = await asyncio.wait_for(request, 20)
    woke_after = time.monotonic() - sent_at
    assert response.json()["messages"][0]["content"] == "Hello from Ana"
    assert woke_after < 3, f"woke after {woke_after * 1000:.0f} ms"
    assert hub.subscriber_count == 0


async def test_a_mode_change_wakes_operator_messages(parley):
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=10))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await parley.services.operators.set_mode(parley.site, SID, "operator")
    body = (await asyncio.wait_for(request, 20)).json()
    assert body == {"success": True, "messages": [], "mode": "operator"}


async def test_a_held_history_request_returns_the_new_messages_only(parley):
    await parley.ask(SID, "hello")
    last = (await parley.get("history", **parley.ids(SID))).json()["messages"][-1]["id"]
    request = asyncio.create_task(parley.get("history", **parley.ids(SID), after=last, wait=10))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await parley.services.operators.say(parley.site, SID, "An operator joins", operator_name="Ana")
    body = (await asyncio.wait_for(request, 20)).json()
    assert [m["content"] for m in body["messages"]] == ["An operator joins"]


async def test_a_held_proactive_request_is_woken_by_a_nudge(parley):
    request = asyncio.create_task(parley.get("pending-proactive", **parley.ids(SID), wait=10))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await parley.services.operators.send_proactive(parley.site, SID, "Need a hand?")
    body = (await asyncio.wait_for(request, 20)).json()
    assert [m["content"] for m in body["messages"]] == ["Need a hand?"]


async def test_a_wait_that_sees_nothing_ends_empty_after_its_time(parley):
    started = time.monotonic()
    body = (await parley.get("operator-messages", **parley.ids(SID), wait=0.3)).json()
    assert body["messages"] == []
    assert time.monotonic() - started >= 0.3
    assert parley.services.hub.subscriber_count == 0


async def test_waits_are_bounded(parley):
    assert (await parley.get("history", **parley.ids(SID), wait=31)).status_code == 400
    assert (await parley.get("history", **parley.ids(SID), wait="nan")).status_code == 400


async def test_a_client_that_hangs_up_is_forgotten(parley):
    hub = parley.services.hub
    async with httpx.AsyncClient(base_url=parley.base_url) as client:
        request = asyncio.create_task(
            client.get("/api/v1/chat/history", params={**parley.ids(SID), "wait": 25}))
        await wait_until(lambda: hub.subscriber_count == 1)
        request.cancel()
    await wait_until(lambda: hub.subscriber_count == 0, timeout=2)


async def test_a_client_that_hangs_up_before_its_wait_begins_is_not_held(parley, monkeypatch):
    """Thousands leaving at once close connections whose request is still being checked; none of
    them may then sit out its whole wait."""
    from handlers.widget_api import OperatorMessagesHandler

    hub, sites = parley.services.hub, parley.services.sites
    entered, gate, closed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    resolve = sites.resolve

    async def slow_resolve(*args, **kwargs):
        entered.set()
        await gate.wait()
        return await resolve(*args, **kwargs)

    original_close = OperatorMessagesHandler.on_connection_close

    def on_close(self):
        original_close(self)
        closed.set()

    monkeypatch.setattr(sites, "resolve", slow_resolve)
    monkeypatch.setattr(OperatorMessagesHandler, "on_connection_close", on_close)
    reader, writer = await asyncio.open_connection("127.0.0.1", parley.port)
    query = f"site_key={parley.site_key}&session_id={SID}&wait=25"
    writer.write(f"GET /api/v1/chat/operator-messages?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await asyncio.wait_for(entered.wait(), 10)
    writer.close()
    await asyncio.wait_for(closed.wait(), 10)
    gate.set()
    for _ in range(20):  # let the handler run on past the check
        await asyncio.sleep(0)
    assert hub.subscriber_count == 0


async def test_other_sessions_do_not_wake_a_waiter(parley):
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=0.5))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await parley.services.operators.say(parley.site, session("other"), "not for you", operator_name="Ana")
    assert (await asyncio.wait_for(request, 20)).json()["messages"] == []


async def run_cli(data_dir: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, "--data-dir", str(data_dir),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PARLEY_LOG_LEVEL": "WARNING"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def widget_loaded(parley) -> None:
    """As the widget does on a page: says where it is, which makes the site know the session."""
    response = await parley.get("pending-proactive", **parley.ids(SID), page_url="https://shop.example/")
    assert response.status_code == 200


async def test_an_operator_message_from_another_process_wakes_a_held_visitor(parley, tmp_path):
    data_dir = parley.services.config.data_dir
    if isinstance(parley.services.bridge, PollingFeed):  # SQLite: only the CLI's ring can wake it
        parley.services.bridge.interval = 600
    await widget_loaded(parley)
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=20))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "operator", "say", "--data-dir", str(data_dir),
        "--site", parley.site_key, "--session", SID, "--name", "Bo", "From the CLI",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    written_at = time.monotonic()
    body = (await asyncio.wait_for(request, 20)).json()
    woke_after = time.monotonic() - written_at
    assert [(m["content"], m["operator_name"]) for m in body["messages"]] == [("From the CLI", "Bo")]
    assert woke_after < 5, f"woke {woke_after:.2f} s after the CLI wrote"


async def test_cli_takeover_proactive_and_block_reach_the_running_server(parley):
    data_dir = parley.services.config.data_dir
    common = ["--site", parley.site_key, "--session", SID]
    await widget_loaded(parley)
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=20))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await run_cli(data_dir, "operator", "takeover", *common)
    assert (await asyncio.wait_for(request, 20)).json()["mode"] == "operator"
    await run_cli(data_dir, "proactive", "send", *common, "Hello", "there")
    assert [m["content"] for m in (await parley.get("pending-proactive", **parley.ids(SID))).json()["messages"]] == ["Hello there"]
    await run_cli(data_dir, "block", *common, "--minutes", "5")
    assert (await parley.get("block-status", **parley.ids(SID))).json()["blocked"] is True
    await run_cli(data_dir, "unblock", *common)
    assert (await parley.get("block-status", **parley.ids(SID))).json()["blocked"] is False
    await run_cli(data_dir, "operator", "release", *common)
    assert (await parley.get("operator-messages", **parley.ids(SID))).json()["mode"] == "ai"


async def test_a_session_cannot_hold_unbounded_requests(parley):
    from server.hub import MAX_HELD_PER_TOPIC as MAX_HELD_PER_SESSION

    held = [asyncio.create_task(parley.get("history", **parley.ids(SID), wait=10))
            for _ in range(MAX_HELD_PER_SESSION)]
    await wait_until(lambda: parley.services.hub.subscriber_count == MAX_HELD_PER_SESSION)
    refused = await parley.get("history", **parley.ids(SID), wait=10)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    other = asyncio.create_task(parley.get("history", **parley.ids(session("held-2")), wait=0.2))
    assert (await other).status_code == 200
    await parley.services.operators.say(parley.site, SID, "wake up", operator_name="Ana")
    assert all(r.status_code == 200 for r in await asyncio.gather(*held))


async def test_a_held_history_request_returns_on_a_takeover_or_a_block(parley):
    for act in (lambda: parley.services.operators.set_mode(parley.site, SID, "operator"),
                lambda: parley.services.operators.block(parley.site, "session", SID, session_id=SID)):
        request = asyncio.create_task(parley.get("history", **parley.ids(SID), wait=10))
        await wait_until(lambda: parley.services.hub.subscriber_count == 1)
        started = time.monotonic()
        await act()
        body = (await asyncio.wait_for(request, 20)).json()
        assert body["messages"] == [] and time.monotonic() - started < 5
    assert body["mode"] == "operator"


async def test_requests_whose_client_left_at_once_are_not_held(parley, caplog):
    """Ghosts: sent and closed at once (a page navigating away). Their holds must not start, or
    they would sit for the whole wait and count against their address."""
    query = "&".join(f"{k}={v}" for k, v in parley.ids(SID).items())
    request = f"GET /api/v1/chat/history?{query}&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", parley.port)
            writer.write(request)
            writer.close()
        await wait_until(lambda: sum("/api/v1/chat/history" in r.getMessage()
                                     for r in caplog.records) == 20)
    assert parley.services.hub.subscriber_count == 0


async def test_a_message_written_here_answers_its_waiter_without_reading_again(parley, monkeypatch):
    store = parley.services.store
    await parley.services.operators.set_mode(parley.site, SID, "operator")
    reads = []
    read = store.conversation_messages

    async def counted(*args, **kwargs):
        reads.append(1)
        return await read(*args, **kwargs)

    monkeypatch.setattr(store, "conversation_messages", counted)
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=10))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await parley.services.operators.say(parley.site, SID, "Right here", operator_name="Ana")
    body = (await asyncio.wait_for(request, 20)).json()
    assert [m["content"] for m in body["messages"]] == ["Right here"]
    assert body["mode"] == "operator"  # as the write saw it
    if store.event_ids_commit_in_order:  # SQLite says what the write saw; others read again
        assert len(reads) == 1  # the read before the wait, none after it


async def test_a_waiter_is_not_answered_past_a_message_it_has_not_heard_of(parley):
    """A message stored elsewhere (another process, its event not heard yet) comes between the
    visitor's cursor and one written here: the waiter reads the store and gets both, in order."""
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=10))
    await wait_until(lambda: parley.services.hub.subscriber_count == 1)
    await parley.services.store.add_operator_message(
        parley.site.id, SID, "From elsewhere", operator_name="Bo", events=lambda message: [],
        origin="elsewhere")
    await parley.services.operators.say(parley.site, SID, "From here", operator_name="Ana")
    body = (await asyncio.wait_for(request, 20)).json()
    assert [m["content"] for m in body["messages"]] == ["From elsewhere", "From here"]


def counting_reads(store, monkeypatch) -> list[int]:
    reads: list[int] = []
    read = store.conversation_messages

    async def counted(*args, **kwargs):
        reads.append(1)
        return await read(*args, **kwargs)

    monkeypatch.setattr(store, "conversation_messages", counted)
    return reads


async def held_operator_messages(parley, after: int = 0) -> asyncio.Task:
    """A widget's held request, once the server holds it."""
    hub = parley.services.hub
    waiting = hub.subscriber_count
    request = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=10,
                                             **({"after": after} if after else {})))
    await wait_until(lambda: hub.subscriber_count > waiting)
    return request


async def test_the_request_after_an_answer_carries_on_without_reading(parley, monkeypatch):
    """The widget asks again at once with the newest id it got: the server still listens for it
    (the request before never stopped), so there is nothing to read before waiting."""
    reads = counting_reads(parley.services.store, monkeypatch)
    request = await held_operator_messages(parley)
    await parley.services.operators.say(parley.site, SID, "One", operator_name="Ana")
    first = (await asyncio.wait_for(request, 20)).json()["messages"]
    request = await held_operator_messages(parley, after=first[-1]["id"])
    await parley.services.operators.say(parley.site, SID, "Two", operator_name="Ana")
    second = (await asyncio.wait_for(request, 20)).json()["messages"]
    assert [m["content"] for m in first + second] == ["One", "Two"]
    if parley.services.store.event_ids_commit_in_order:  # SQLite answers from the write itself
        assert len(reads) == 1  # the first request's read, before its wait


async def test_messages_between_an_answer_and_the_next_request_are_not_lost(parley):
    request = await held_operator_messages(parley)
    await parley.services.operators.say(parley.site, SID, "One", operator_name="Ana")
    first = (await asyncio.wait_for(request, 20)).json()["messages"]
    # Nobody is waiting now: one written here, one by another process (its event heard here).
    await parley.services.operators.say(parley.site, SID, "Two", operator_name="Ana")
    stored = await parley.services.store.add_operator_message(
        parley.site.id, SID, "Three", operator_name="Bo", events=lambda message: [], origin="elsewhere")
    parley.services.hub.deliver_local(session_topic(parley.site.id, SID),
                                      {"kind": "message", "message_id": stored.id, "role": "operator"})
    body = (await asyncio.wait_for(parley.get(
        "operator-messages", **parley.ids(SID), wait=10, after=first[-1]["id"]), 20)).json()
    assert [m["content"] for m in body["messages"]] == ["Two", "Three"]


async def test_news_from_elsewhere_while_nobody_waits_is_read(parley):
    """Another process's message, heard of (through the events feed) between an answer and the
    next request, wakes that request at once and is read from the store."""
    hub = parley.services.hub
    request = await held_operator_messages(parley)
    await parley.services.operators.say(parley.site, SID, "One", operator_name="Ana")
    first = (await asyncio.wait_for(request, 20)).json()["messages"]
    stored = await parley.services.store.add_operator_message(
        parley.site.id, SID, "From elsewhere", operator_name="Bo", events=lambda message: [],
        origin="elsewhere")
    hub.deliver_local(session_topic(parley.site.id, SID),
                      {"kind": "message", "message_id": stored.id, "role": "operator"})
    body = (await asyncio.wait_for(parley.get(
        "operator-messages", **parley.ids(SID), wait=10, after=first[-1]["id"]), 20)).json()
    assert [m["content"] for m in body["messages"]] == ["From elsewhere"]


async def test_a_request_with_another_cursor_reads_the_store(parley, monkeypatch):
    request = await held_operator_messages(parley)
    await parley.services.operators.say(parley.site, SID, "One", operator_name="Ana")
    await asyncio.wait_for(request, 20)
    reads = counting_reads(parley.services.store, monkeypatch)
    body = (await asyncio.wait_for(parley.get("operator-messages", **parley.ids(SID)), 20)).json()
    assert [m["content"] for m in body["messages"]] == ["One"]  # from the start: all of it
    assert len(reads) == 1


async def test_nothing_is_kept_for_a_widget_that_does_not_ask_again(parley):
    hub = parley.services.hub
    hub.park_seconds = 0.05
    request = await held_operator_messages(parley)
    await parley.services.operators.say(parley.site, SID, "One", operator_name="Ana")
    await asyncio.wait_for(request, 20)
    topic = session_topic(parley.site.id, SID)
    await wait_until(lambda: topic not in hub._subscribers)  # nothing left listening
    assert hub.subscriber_count == 0


async def test_another_process_message_after_an_answer_reaches_the_next_request(parley):
    """Through the real events feed: after an answer nobody is held for a moment, but the
    subscription kept for the next request still hears other processes' events."""
    hub = parley.services.hub
    request = await held_operator_messages(parley)
    await parley.services.operators.say(parley.site, SID, "One", operator_name="Ana")
    first = (await asyncio.wait_for(request, 20)).json()["messages"]
    assert hub.subscriber_count == 0  # nobody held now, but the feed goes on for the next request
    feed = parley.services.bridge
    polls = []
    read = feed._read

    async def counted():
        polls.append(1)
        return await read()

    feed._read = counted
    await wait_until(lambda: len(polls) >= 2)
    await parley.services.store.add_operator_message(
        parley.site.id, SID, "From the other process", operator_name="Bo", origin="other-process",
        events=lambda message: hub.session_events(parley.site.id, SID, "message",
                                                  {"message_id": message.id, "role": "operator"}))
    body = (await asyncio.wait_for(parley.get(
        "operator-messages", **parley.ids(SID), wait=10, after=first[-1]["id"]), 20)).json()
    assert [m["content"] for m in body["messages"]] == ["From the other process"]
