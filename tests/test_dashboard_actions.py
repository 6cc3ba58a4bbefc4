"""What operators do from the dashboard, through its real HTTP interface, and the live feed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import httpx_sse
import pytest

import server.inbox
from server.hub import site_topic

from tests.dashboard import Operator, sign_in
from tests.harness import Parley, session, start_parley
from tests.providers import GatedProvider
from tests.waiting import eventually

SID = session("dash-actions")
SignIn = Callable[..., Awaitable[Operator]]


@pytest.fixture
async def ana(parley: Parley) -> AsyncIterator[Operator]:
    operator = await sign_in(parley, "ana@example.com")
    yield operator
    await operator.client.aclose()


async def conversation_of(parley: Parley, session_id: str = SID) -> int:
    conversation = await parley.services.store.get_conversation(parley.site.id, session_id)
    assert conversation is not None
    return conversation.id


async def read_feed(operator: Operator, until: Callable[[list[dict[str, Any]]], bool], *,
                    last_event_id: str | None = None, started: asyncio.Event | None = None,
                    timeout: float = 10) -> list[dict[str, Any]]:
    """Events of /dashboard/events (each with its `id`) until `until(events)` holds."""
    events: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with asyncio.timeout(timeout):
        async with httpx_sse.aconnect_sse(operator.client, "GET", "/dashboard/events",
                                          headers=headers, timeout=httpx.Timeout(timeout)) as source:
            assert source.response.status_code == 200
            async for event in source.aiter_sse():
                events.append({**json.loads(event.data), "id": event.id})
                if started is not None and events[-1]["kind"] == "ready":
                    started.set()
                if until(events):
                    return events
    return events


async def test_take_over_reply_hand_back_close_and_reopen(parley: Parley, ana: Operator):
    await parley.ask(SID, "Do you ship to Canada?")
    cid = await conversation_of(parley)
    assert (await ana.act(cid, "takeover")).status_code == 200
    conversation = (await ana.api(f"conversations/{cid}")).json()["conversation"]
    assert conversation["mode"] == "operator" and conversation["assignee_id"] == ana.id
    # The visitor's held request wakes with the reply at once.
    held = asyncio.create_task(parley.get("operator-messages", **parley.ids(SID), wait=20))
    await asyncio.sleep(0)  # let the request start; the reply may land before or after it holds
    started = time.monotonic()
    reply = await ana.act(cid, "reply", {"text": "Hi, I'm Ana.\nHow can I help?"})
    assert reply.status_code == 200
    woke = await asyncio.wait_for(held, 10)
    assert time.monotonic() - started < 5
    messages = woke.json()["messages"]
    assert messages[-1]["content"] == "Hi, I'm Ana.\nHow can I help?"
    assert messages[-1]["operator_name"] == "Ana"
    # While an operator answers, a visitor message gets no AI answer.
    done = (await parley.ask(SID, "Thanks!"))[-1]
    assert done["meta"]["mode"] == "operator"
    assert (await ana.act(cid, "handback")).status_code == 200
    assert (await parley.get("history", **parley.ids(SID))).json()["mode"] == "ai"
    assert (await ana.act(cid, "close")).status_code == 200
    assert cid not in [c["id"] for c in (await ana.api("inbox")).json()["conversations"]]
    assert cid in [c["id"] for c in (await ana.api("inbox", status="closed")).json()["conversations"]]
    assert (await ana.act(cid, "reopen")).status_code == 200
    assert cid in [c["id"] for c in (await ana.api("inbox")).json()["conversations"]]
    actions = [e.action for e in await parley.services.audit.entries()]
    for expected in ("sign_in", "takeover", "handback", "close", "reopen"):
        assert expected in actions


async def test_a_visitor_writing_in_a_closed_conversation_reopens_it(parley: Parley, ana: Operator):
    sid = session("closed-then-asks")
    await parley.ask(sid, "Do you ship to Canada?")
    cid = await conversation_of(parley, sid)
    assert (await ana.act(cid, "close")).status_code == 200
    assert cid not in [c["id"] for c in (await ana.api("inbox")).json()["conversations"]]
    await parley.ask(sid, "I want to talk to a human")
    closed = (await ana.api(f"conversations/{cid}")).json()["conversation"]
    assert (closed["closed"], closed["handoff"]) == (False, True)  # reopened, and needs a person
    assert (await ana.act(cid, "close")).status_code == 200  # closing decides that too
    closed = (await ana.api(f"conversations/{cid}")).json()["conversation"]
    assert (closed["closed"], closed["handoff"], closed["handoff_why"]) == (True, False, None)
    await parley.ask(sid, "I want to talk to a human")
    assert cid in [c["id"] for c in (await ana.api("inbox", status="handoff")).json()["conversations"]]
    assert (await ana.api(f"conversations/{cid}")).json()["conversation"]["closed"] is False


async def test_take_over_stops_an_answer_already_streaming(parley: Parley, ana: Operator):
    provider = GatedProvider(["The AI says ", "something ", "long."])
    parley.services.ai.default_provider = provider
    stream = asyncio.create_task(parley.ask(SID, "Tell me everything"))
    await asyncio.wait_for(provider.started.wait(), 10)
    provider.release()
    cid = await conversation_of(parley)
    assert (await ana.act(cid, "takeover")).status_code == 200
    events = await asyncio.wait_for(stream, 10)
    assert events[-1]["type"] == "done"
    assert provider.cancelled.is_set()
    history = (await parley.get("history", **parley.ids(SID))).json()
    answers = [m for m in history["messages"] if m["role"] == "ai"]
    assert [(m["content"], m["status"]) for m in answers] == [("The AI says ", "interrupted")]
    assert history["mode"] == "operator"


async def test_notes_never_reach_the_visitor_or_the_model(parley: Parley, ana: Operator):
    await parley.ask(SID, "Hello")
    cid = await conversation_of(parley)
    assert (await ana.act(cid, "note", {"text": "VIP customer, be nice"})).status_code == 200
    view = (await ana.api(f"conversations/{cid}")).json()
    assert [n["content"] for n in view["notes"]] == ["VIP customer, be nice"]
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert all("VIP" not in m["content"] for m in history)
    recent = await parley.services.store.recent_messages(cid, 50)  # what the model is given
    assert all("VIP" not in m.content for m in recent)


async def test_assign_block_and_unblock(parley: Parley, ana: Operator):
    await parley.ask(SID, "Hello")
    cid = await conversation_of(parley)
    bob = await sign_in(parley, "bob@example.com", "agent", (parley.site.id,))
    try:
        assert (await ana.act(cid, "assign", {"operator_id": bob.id})).status_code == 200
        mine = (await bob.api("inbox", status="mine")).json()["conversations"]
        assert [c["id"] for c in mine] == [cid]
        assert (await ana.api("inbox", status="unassigned")).json()["conversations"] == []
    finally:
        await bob.client.aclose()
    blocked = await ana.act(cid, "block", {"kinds": ["session", "ip"], "minutes": 60,
                                           "reason": "spam"})
    assert blocked.status_code == 200
    assert (await parley.get("block-status", **parley.ids(SID))).json()["blocked"] is True
    assert (await ana.api(f"conversations/{cid}")).json()["conversation"]["blocked"] is True
    refused = await parley.client.post("/api/v1/chat/stream", json=parley.ids(SID, message="hi"))
    assert refused.status_code == 403
    await parley.services.store.update_conversation(cid, {"email": "visitor@example.com"})
    assert (await ana.act(cid, "unblock")).status_code == 200
    assert (await parley.get("block-status", **parley.ids(SID))).json()["blocked"] is False
    # The audit keeps the two blocks lifted, not the email block the visitor never had.
    unblocks = [e.target for e in await parley.services.audit.entries() if e.action == "unblock"]
    assert sorted(target.split(":")[0] for target in unblocks) == ["ip", "session"]
    audit_page = (await ana.get("/dashboard/audit")).text  # the site by its name, not its id
    assert f"<td>unblock</td><td>{parley.site.name}</td><td>session:{SID}</td>" in audit_page
    bad = await ana.act(cid, "block", {"kinds": ["everything"]})
    assert bad.status_code == 400


async def test_search_finds_words_in_any_message(parley: Parley, ana: Operator):
    await parley.ask(SID, "Where is my parcel? Tracking says Montréal")
    await parley.ask(session("other-search"), "Do you sell gift cards?")
    found = (await ana.api("inbox", q="montreal")).json()["conversations"]
    assert [c["session_id"] for c in found] == [SID]
    assert (await ana.api("inbox", q='parc "')).json()["conversations"][0]["session_id"] == SID
    assert (await ana.api("inbox", q="nothing-like-this")).json()["conversations"] == []


async def test_the_feed_brings_new_conversations_and_messages_live(parley: Parley, ana: Operator):
    started = asyncio.Event()
    feed = asyncio.create_task(read_feed(
        ana, lambda events: any(e["kind"] == "message" and e.get("role") == "ai" for e in events),
        started=started))
    await asyncio.wait_for(started.wait(), 10)
    await parley.ask(SID, "Do you ship to Canada?")
    events = await feed
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "ready" and "message" in kinds
    assert any(e["kind"] == "chunk" and e["session_id"] == SID and e["site_id"] == parley.site.id
               for e in events)  # the AI, live
    ids = [int(e["id"]) for e in events if e["kind"] not in ("chunk",)]
    assert ids == sorted(ids)


async def test_every_open_tab_gets_every_message_once_in_order(parley: Parley, ana: Operator):
    # Tabs woken by the same message share one store read; none may miss one or get it twice.
    sessions = {session(f"tabs-{n}") for n in range(4)}

    def saw_all(events: list[dict[str, Any]]) -> bool:
        return {e["session_id"] for e in events if e.get("role") == "ai"} == sessions

    started = [asyncio.Event() for _ in range(5)]
    tabs = [asyncio.create_task(read_feed(ana, saw_all, started=s, timeout=30)) for s in started]
    await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 10)
    ordered = sorted(sessions)
    answers = await asyncio.gather(*(parley.ask(sid, "Do you ship to Canada?") for sid in ordered))
    texts = {sid: "".join(e["content"] for e in answer if e["type"] == "chunk")
             for sid, answer in zip(ordered, answers)}
    for events in await asyncio.gather(*tabs):
        ids = [int(e["id"]) for e in events if e["kind"] not in ("chunk", "ready")]
        assert ids == sorted(set(ids))
        assert {e["session_id"] for e in events if e.get("role") == "visitor"} == sessions
        for sid in sessions:  # each answer live, every chunk once and in order, as the visitor got it
            live = "".join(e["content"] for e in events if e["kind"] == "chunk" and e["session_id"] == sid)
            assert live == texts[sid] != ""


async def test_a_tab_that_stops_reading_is_cut_off_not_buffered_for(parley: Parley, ana: Operator,
                                                                     monkeypatch):
    monkeypatch.setattr("handlers.sse.MAX_QUEUED", 64 * 1024)
    host, port = parley.base_url.removeprefix("http://").split(":")
    cookies = "; ".join(f"{name}={value}" for name, value in ana.client.cookies.items())
    reader, writer = await asyncio.open_connection(host, int(port), limit=1024)
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f"GET /dashboard/events HTTP/1.1\r\nHost: {host}\r\nCookie: {cookies}\r\n\r\n".encode())
    await reader.readuntil(b"ready")
    writer.transport.pause_reading()  # a tab that stops reading: a laptop's lid shut on a busy site
    hub, topic = parley.services.hub, site_topic(parley.site.id)
    assert hub.waiting_on(topic) == 1
    chunk = {"kind": "chunk", "site_id": parley.site.id, "session_id": SID, "content": "x" * 4000}

    def let_go_after_more() -> bool:
        """True once the server let go of the tab; else 200 KB more for it."""
        if not hub.waiting_on(topic):
            return True
        for _ in range(50):
            hub.deliver_local(topic, {**chunk})
        return False

    try:  # at most ~200 checks (40 MB) in the deadline: far beyond any socket buffer
        await eventually(let_go_after_more, timeout=20,
                         what="the server letting go of a tab that stopped reading")
    finally:
        writer.close()


async def test_a_reconnecting_feed_gets_what_it_missed_or_a_refetch(parley: Parley, ana: Operator):
    first = await read_feed(ana, lambda events: events[-1]["kind"] == "ready")
    cursor = first[-1]["id"]
    await parley.ask(SID, "Sent while the tab was away")  # stored while nobody listened
    missed = await read_feed(ana, lambda events: any(e.get("role") == "ai" for e in events),
                             last_event_id=cursor)
    assert any(e["kind"] == "message" and e.get("role") == "visitor" for e in missed)
    # Older than what is kept: the page is told to reload its lists.
    await parley.services.store.prune_events(time.time() + 1)
    await parley.ask(SID, "And another")
    stale = await read_feed(ana, lambda events: events[-1]["kind"] == "ready", last_event_id=cursor)
    assert stale[0]["kind"] == "refetch"


async def test_an_agent_feed_carries_nothing_of_other_sites(parley: Parley):
    other = await parley.services.sites.create("Other shop")
    agent = await sign_in(parley, "agent@example.com", "agent", (other.id,))
    try:
        started = asyncio.Event()
        feed = asyncio.create_task(read_feed(
            agent, lambda events: any(e["kind"] == "message" for e in events), started=started))
        await asyncio.wait_for(started.wait(), 10)
        await parley.ask(SID, "A secret on the first site")
        await parley.ask(session("other-site"), "Hello", site_key=other.site_key)
        events = await feed
        assert all(e.get("site_id") in (None, other.id) for e in events)
        assert all("secret" not in json.dumps(e) for e in events)
    finally:
        await agent.client.aclose()


async def test_visitors_online_and_a_proactive_message(parley: Parley, ana: Operator):
    await parley.get("pending-proactive", **parley.ids(SID), page_url="https://shop.test/pricing")

    async def listed() -> bool:  # presence is written in batches, a second apart
        visitors = (await ana.api("visitors")).json()["visitors"]
        return [(v["session_id"], v["page_url"]) for v in visitors] == [(SID, "https://shop.test/pricing")]

    await eventually(listed, timeout=10)
    assert (await ana.api("inbox")).json()["conversations"] == []  # browsing is not a chat
    sent = await ana.post_json("/dashboard/api/proactive",
                               {"site_id": parley.site.id, "session_id": SID, "text": "Need a hand?"})
    assert sent.status_code == 200
    pending = (await parley.get("pending-proactive", **parley.ids(SID))).json()["messages"]
    assert [m["content"] for m in pending] == ["Need a hand?"]


async def test_a_new_visitor_is_online_from_the_first_question(parley: Parley, ana: Operator):
    # The widget reads the history first (no conversation yet, no page), then asks.
    assert (await parley.get("history", **parley.ids(SID))).json()["messages"] == []
    await parley.ask(SID, "Do you ship to Canada?")
    [row] = (await ana.api("inbox")).json()["conversations"]
    assert row["online"] is True


@pytest.mark.parametrize("revoke", ["disabled", "site taken away"])
async def test_a_revoked_operators_live_feed_ends(parley: Parley, monkeypatch, revoke: str):
    import server.inbox
    monkeypatch.setattr(server.inbox, "ALLOWED_CHECK_SECONDS", 0.2)
    agent = await sign_in(parley, "bo@example.com", "agent", (parley.site.id,))
    try:
        started = asyncio.Event()
        feed = asyncio.create_task(read_feed(agent, lambda events: False, started=started))
        await asyncio.wait_for(started.wait(), 10)
        store = parley.services.store
        if revoke == "disabled":
            await store.update_operator(agent.id, {"disabled": True})
        else:
            await store.set_operator_sites(agent.id, [])
        # The open stream ends by itself (read_feed returns when it does; a timeout otherwise).
        events = await asyncio.wait_for(feed, 10)
        assert [e["kind"] for e in events] == ["ready"]
    finally:
        await agent.client.aclose()


async def test_unread_counts_and_marking_read(parley: Parley, ana: Operator):
    await parley.ask(SID, "one")
    await parley.ask(SID, "two")
    [row] = (await ana.api("inbox")).json()["conversations"]
    assert row["unread"] == 2 and row["online"] is True
    view = (await ana.api(f"conversations/{row['id']}")).json()
    last = view["messages"][-1]["id"]
    assert (await ana.act(row["id"], "read", {"through": last})).status_code == 200
    assert (await ana.api("inbox")).json()["conversations"][0]["unread"] == 0


async def test_an_answer_made_by_another_process_is_watched_live(parley: Parley, ana: Operator,
                                                                 monkeypatch):
    import server.answer_watch
    from server.app import build_services
    from server.visitor import TurnRequest, Visitor

    monkeypatch.setattr(server.answer_watch, "PROGRESS_EVERY", 0.0)
    other = await build_services(parley.services.config)  # a second process on the same data
    provider = GatedProvider(["Made ", "elsewhere."])
    other.ai.default_provider = provider
    try:
        started = asyncio.Event()
        feed = asyncio.create_task(read_feed(ana, lambda events: any(
            e["kind"] == "answer_progress" and e["text"] == "Made " for e in events), started=started))
        await asyncio.wait_for(started.wait(), 10)
        turn = await other.chat.start_turn(Visitor(parley.site, SID, "127.0.0.1"),
                                           TurnRequest("Hi there", "m_elsewhere", None, None, None))
        await asyncio.wait_for(provider.started.wait(), 10)
        provider.release()
        events = await feed
        progress = next(e for e in events if e["kind"] == "answer_progress")
        assert (progress["session_id"], progress["reply_to"], progress["site_id"]) == \
            (SID, "m_elsewhere", parley.site.id)
        provider.release()
        assert [e.type async for e in turn.follow()][-1] == "done"
    finally:
        await other.close()


async def test_the_inbox_pages_by_its_next_cursor(parley: Parley, ana: Operator):
    for n in range(3):
        await parley.ask(session(f"paging-{n}"), "Do you ship to Canada?")
    first = (await ana.api("inbox", limit="2")).json()
    assert len(first["conversations"]) == 2 and first["next"]
    rest = (await ana.api("inbox", limit="2", before=first["next"])).json()
    assert len(rest["conversations"]) == 1 and rest["next"] is None
    assert {c["id"] for c in first["conversations"] + rest["conversations"]} == \
        {await conversation_of(parley, session(f"paging-{n}")) for n in range(3)}
    refused = await ana.api("inbox", before="2026-01-01")
    assert refused.status_code == 400 and "'before'" in refused.json()["error"]


async def test_a_conversation_longer_than_the_view_says_earlier_messages_exist(parley: Parley, ana: Operator,
                                                                                monkeypatch):
    monkeypatch.setattr(server.inbox, "CONVERSATION_MESSAGES", 3)
    for n in range(3):
        await parley.services.operators.say(parley.site, SID, f"Message {n}", operator_name="Ana")
    cid = await conversation_of(parley)
    shown = (await ana.api(f"conversations/{cid}")).json()
    assert [m["content"] for m in shown["messages"]] == ["Message 0", "Message 1", "Message 2"]
    assert shown["earlier"] is False  # all of it
    await parley.services.operators.say(parley.site, SID, "Message 3", operator_name="Ana")
    newest = (await ana.api(f"conversations/{cid}")).json()
    assert [m["content"] for m in newest["messages"]] == ["Message 1", "Message 2", "Message 3"]
    assert newest["earlier"] is True


async def test_the_inbox_search_finds_a_visitor_by_email_or_session_id(parley: Parley, ana: Operator):
    await parley.ask(SID, "Do you ship to Canada?")
    await parley.post("email", parley.ids(SID, email="Jane@Example.com"))
    await parley.ask(session("someone-else"), "Do you ship to Canada?")
    cid = await conversation_of(parley)
    for query in ("jane@example.COM", SID):
        found = (await ana.api("inbox", q=query)).json()["conversations"]
        assert [c["id"] for c in found] == [cid], query
    # An email only ever typed into a message is found by the words of the messages.
    await parley.ask(session("typed-it"), "Write to bob@example.org please")
    typed = (await ana.api("inbox", q="bob@example.org")).json()["conversations"]
    assert [c["id"] for c in typed] == [await conversation_of(parley, session("typed-it"))]


async def test_a_quiet_feed_sends_keepalives(tmp_path):
    async for quiet in start_parley(tmp_path, sse_keepalive=0.05):
        operator = await sign_in(quiet, "kay@example.com")
        try:
            received = ""
            async with asyncio.timeout(10):
                async with operator.client.stream("GET", "/dashboard/events") as response:
                    async for text in response.aiter_text():
                        received += text
                        if received.count(": keepalive") >= 2:
                            break
            assert received.startswith("id: ") and '"kind":"ready"' in received
        finally:
            await operator.client.aclose()
