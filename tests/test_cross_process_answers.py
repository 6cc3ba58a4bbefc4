"""Several processes over one data directory: a retry that lands on another process than the
first request waits for that answer instead of making a second one."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import AsyncIterator

import httpx
import httpx_sse
import pytest

from server.app import Services, build_services
from server.turns import Turn
from server.visitor import TurnRequest, Visitor
from tests.harness import Parley, session
from tests.processes import server_process
from tests.providers import GatedProvider
from tests.waiting import eventually

SID = session("two-processes")


async def relayed_text(turn: Turn) -> str:
    events = [event async for event in turn.follow()]
    assert events[-1].type == "done"
    return "".join(e.content for e in events if e.type == "chunk")


@pytest.fixture
async def other(parley: Parley) -> AsyncIterator[Services]:
    """A second process over the same data directory: its own store connection and hub."""
    services = await build_services(parley.services.config)
    yield services
    await services.close()


async def first_then_retry_elsewhere(parley: Parley, other: Services, first_provider: GatedProvider,
                                     message_id: str) -> tuple[asyncio.Task, asyncio.Task]:
    """The visitor's request on this process, then its retry on the other one, both under way."""
    body = parley.ids(SID, message="Hello?", message_id=message_id)
    first = asyncio.create_task(parley.stream_events(body))
    await asyncio.wait_for(first_provider.started.wait(), 20)
    retry = await other.chat.start_turn(Visitor(parley.site, SID, "127.0.0.1"),
                                        TurnRequest("Hello?", message_id, None, None, None))
    relayed = asyncio.create_task(relayed_text(retry))
    # The retry is waiting for the first process's answer (it listens for its reply).
    await eventually(lambda: other.hub.subscriber_count >= 1, what="the retry waiting on the claim")
    return first, relayed


async def test_a_retry_on_another_process_relays_the_answer_in_progress(parley, other):
    parley.services.ai.default_provider = answering = GatedProvider(["Made ", "once."])
    other.ai.default_provider = idle = GatedProvider(["a second answer"])
    first, relayed = await first_then_retry_elsewhere(parley, other, answering, "m_shared")
    answering.release(2)

    events = await asyncio.wait_for(first, 30)
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == "Made once."
    assert await asyncio.wait_for(relayed, 30) == "Made once."
    assert idle.requests == []
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"]


async def test_after_the_first_process_is_cut_off_another_answers_in_full(parley, other, leaving_cuts_at_once):
    parley.services.ai.default_provider = cut = GatedProvider(["Partial ", "never"])
    other.ai.default_provider = whole = GatedProvider(["The whole answer."])
    whole.release()
    first, relayed = await first_then_retry_elsewhere(parley, other, cut, "m_cut")
    cut.release()
    await eventually(lambda: cut.yielded == 1, what="the first chunk made")
    first.cancel()  # the first visitor connection drops mid-answer
    assert await asyncio.wait_for(relayed, 30) == "The whole answer."
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("visitor", "complete"), ("ai", "interrupted"), ("ai", "complete")]


async def test_an_answer_a_retry_elsewhere_waits_for_goes_on_after_its_own_visitor_left(
        parley, other, monkeypatch):
    """The first connection drops and the retry lands on another process: the first process
    keeps answering past the grace a dropped stream gets, since the retry waits for it."""
    import server.answering
    import server.turns

    monkeypatch.setattr(server.turns, "ABANDONED_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(server.answering, "CLAIM_HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setattr(server.answering, "CLAIM_CHECK_SECONDS", 0.05)
    kept_at = []
    followed_answers = parley.services.store.followed_answers

    async def noting_followed(claims, **kwargs):
        followed = await followed_answers(claims, **kwargs)
        kept_at.extend(time.monotonic() for elsewhere in followed if elsewhere)
        return followed

    monkeypatch.setattr(parley.services.store, "followed_answers", noting_followed)
    parley.services.ai.default_provider = slow = GatedProvider(["Made ", "once."])
    other.ai.default_provider = idle = GatedProvider(["a second answer"])
    first, relayed = await first_then_retry_elsewhere(parley, other, slow, "m_followed")
    first.cancel()  # the visitor's first connection drops mid-answer
    [answer] = parley.services.chat.answers._live_turns.values()
    await asyncio.wait_for(answer.unfollowed(), 10)
    # Kept going for four times the grace, by the other process's notes.
    await eventually(lambda: len(kept_at) > 1 and kept_at[-1] - kept_at[0] >= 4 * 0.5,
                     what="the answer kept going")
    assert not slow.cancelled.is_set()
    slow.release(2)
    assert await asyncio.wait_for(relayed, 10) == "Made once."
    assert idle.requests == []
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [(m["role"], m["status"]) for m in history] == [("visitor", "complete"), ("ai", "complete")]


async def test_a_retry_after_the_answering_process_is_killed_answers_within_seconds(parley):
    """The first process dies mid-answer (kill -9): its claim is no longer renewed, so a retry on
    another process takes the answer over within seconds instead of waiting for a timeout."""
    body = parley.ids(SID, message="How long does shipping to Canada take?", message_id="m_crash")
    # Its answer starts and then stalls (an hour between chunks): it is in progress when killed.
    with server_process(parley.services.config.data_dir, "--offline-chunk-delay", "3600") as first:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as client:
            async with httpx_sse.aconnect_sse(client, "POST", "/api/v1/chat/stream", json=body) as source:
                async for event in source.aiter_sse():
                    if json.loads(event.data)["type"] == "chunk":
                        break  # the first process holds the claim and is answering
                first.process.send_signal(signal.SIGKILL)
                first.process.wait(10)
    started = time.monotonic()
    events = await asyncio.wait_for(parley.stream_events(body), 60)
    elapsed = time.monotonic() - started
    assert [e["type"] for e in events if e["type"] != "chunk"] == ["done"]
    assert "4 to 7 business days" in "".join(e["content"] for e in events if e["type"] == "chunk")
    assert elapsed < 15, f"the retry took {elapsed:.1f} s"


async def test_a_slow_answer_keeps_its_claim_while_its_process_lives(parley, other, monkeypatch):
    import server.answering

    # A stale time 15 heartbeats long: a loaded CI machine may pause the process for a while.
    monkeypatch.setattr(server.answering, "CLAIM_STALE_SECONDS", 1.5)
    monkeypatch.setattr(server.answering, "CLAIM_HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setattr(server.answering, "CLAIM_CHECK_SECONDS", 0.05)
    renewals = []
    renew = parley.services.store.renew_claims

    async def counting_renewals(claims, *args, **kwargs):
        renewals.extend(kwargs["now"] for claim in claims if claim[1] == "m_slow")
        return await renew(claims, *args, **kwargs)

    monkeypatch.setattr(parley.services.store, "renew_claims", counting_renewals)
    parley.services.ai.default_provider = slow = GatedProvider(["Slow ", "but mine."])
    other.ai.default_provider = idle = GatedProvider(["a second answer"])
    first, relayed = await first_then_retry_elsewhere(parley, other, slow, "m_slow")
    # Well past the stale time, renewed all along.
    await eventually(lambda: len(renewals) > 1 and renewals[-1] - renewals[0] >= 2 * 1.5,
                     what="the claim's renewals")
    slow.release(2)
    assert await asyncio.wait_for(relayed, 10) == "Slow but mine."
    assert idle.requests == []
    await asyncio.wait_for(first, 10)


async def test_an_answer_that_ends_between_a_look_and_a_claim_is_relayed_not_made_twice(
        parley, other, monkeypatch):
    """The retry looks for the first answer's reply, finds none, and claims: if that answer ended
    in between (its reply stored and its claim let go just after the look), the claim succeeds,
    and the retry must still relay the stored reply rather than answer a second time."""
    parley.services.ai.default_provider = answering = GatedProvider(["Made ", "once."])
    other.ai.default_provider = idle = GatedProvider(["a second answer"])
    read_reply = other.store.get_reply
    ended = []

    async def look_just_before_the_answer_ends(conversation_id: int, message_id: str):
        if ended or other.hub.subscriber_count == 0:  # not yet waiting, or after the claim
            return await read_reply(conversation_id, message_id)
        # The first look while waiting reads nothing, then the answer ends.
        ended.append(message_id)
        answering.release(2)
        # Stored in the transaction that lets its claim go (SQLite's finish_answer).
        await eventually(lambda: read_reply(conversation_id, message_id),
                         what="the first process's reply stored")
        return None

    monkeypatch.setattr(other.store, "get_reply", look_just_before_the_answer_ends)
    first, relayed = await first_then_retry_elsewhere(parley, other, answering, "m_between")
    assert await asyncio.wait_for(relayed, 10) == "Made once."
    assert idle.requests == []
    await asyncio.wait_for(first, 10)
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"]
