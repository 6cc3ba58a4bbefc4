"""Several processes over one data directory: a retry that lands on another process than the
first request waits for that answer instead of making a second one."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from server.app import Services, build_services
from server.turns import Turn
from server.visitor import TurnRequest, Visitor
from tests.harness import Parley, session
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
    await asyncio.wait_for(first_provider.started.wait(), 5)
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

    events = await asyncio.wait_for(first, 10)
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == "Made once."
    assert await asyncio.wait_for(relayed, 10) == "Made once."
    assert idle.requests == []
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"]


async def test_after_the_first_process_is_cut_off_another_answers_in_full(parley, other):
    parley.services.ai.default_provider = cut = GatedProvider(["Partial ", "never"])
    other.ai.default_provider = whole = GatedProvider(["The whole answer."])
    whole.release()
    first, relayed = await first_then_retry_elsewhere(parley, other, cut, "m_cut")
    cut.release()
    await eventually(lambda: cut.yielded == 1, what="the first chunk made")
    first.cancel()  # the first visitor connection drops mid-answer
    assert await asyncio.wait_for(relayed, 10) == "The whole answer."
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("visitor", "complete"), ("ai", "interrupted"), ("ai", "complete")]
