"""Parley on MongoDB through its real HTTP interface: the same behaviour as on SQLite, processes
that hear each other, and a database that goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from server.app import Services, build_services
from tests.harness import Parley, session, start_parley
from tests.mongo import MongoServer, start_stand_in
from tests.waiting import until_held

ROOT = Path(__file__).resolve().parent.parent
SID = session("mongo")


@pytest.fixture
async def parley_mongo(tmp_path, mongo_uri) -> AsyncIterator[Parley]:
    async for harness in start_parley(tmp_path, store=mongo_uri):
        yield harness


@pytest.fixture
async def other_process(parley_mongo: Parley) -> AsyncIterator[Services]:
    """A second process on the same database: its own client, hub and events feed."""
    services = await build_services(parley_mongo.services.config)
    yield services
    await services.close()


async def test_a_conversation_on_mongodb(parley_mongo):
    events = await parley_mongo.ask(SID, "How long does shipping to Canada take?", message_id="m_q1")
    assert events[-1]["type"] == "done" and "4 to 7" in "".join(
        e["content"] for e in events if e["type"] == "chunk")
    again = await parley_mongo.ask(SID, "How long does shipping to Canada take?", message_id="m_q1")
    assert again[-1]["meta"]["reply_id"] == events[-1]["meta"]["reply_id"]  # replayed, not redone
    history = (await parley_mongo.get("history", **parley_mongo.ids(SID))).json()
    assert [m["role"] for m in history["messages"]] == ["visitor", "ai"]
    first = history["messages"][0]["id"]
    later = (await parley_mongo.get("history", **parley_mongo.ids(SID, after=first))).json()
    assert [m["role"] for m in later["messages"]] == ["ai"]
    assert (await parley_mongo.post("rate", parley_mongo.ids(SID, score=5))).status_code == 200


async def test_operator_values_never_reach_the_database(parley_mongo):
    for body in ({"site_key": {"$gt": ""}, "session_id": SID},
                 {"site_key": parley_mongo.site_key, "session_id": {"$ne": None}, "score": 5}):
        response = await parley_mongo.post("rate", body)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request"


async def test_an_operator_reply_in_one_process_wakes_a_visitor_held_by_another(parley_mongo, other_process):
    await parley_mongo.ask(SID, "Hello")
    site = parley_mongo.site
    held = asyncio.create_task(parley_mongo.get("operator-messages", **parley_mongo.ids(SID, wait=20)))
    await until_held(parley_mongo.services, site.id, SID)
    started = time.monotonic()
    await other_process.operators.say(site, SID, "Ana here, how can I help?", operator_name="Ana")
    response = await asyncio.wait_for(held, 10)
    woken_after = time.monotonic() - started
    assert [m["content"] for m in response.json()["messages"]] == ["Ana here, how can I help?"]
    assert woken_after < 1.0, f"woken after {woken_after:.2f} s"
    ready = (await parley_mongo.client.get("/readyz")).json()
    assert ready == {"status": "ok", "store": "ok", "events": "ok", "disk": "ok", "images": "ok"}


async def test_images_on_mongodb_with_local_blobs(parley_mongo):
    from tests.test_api_endpoints import png_bytes

    response = await parley_mongo.client.post(
        "/api/v1/chat/upload-image", data=parley_mongo.ids(SID), files={"image": ("a.png", png_bytes((8, 8)), "image/png")})
    assert response.status_code == 200
    served = await parley_mongo.client.get(response.json()["url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"


@pytest.fixture
def restartable_mongo(tmp_path) -> MongoServer:
    """A stand-in of our own, keeping its data in a file so that it survives a restart."""
    if os.environ.get("PARLEY_TEST_MONGO_URI"):
        pytest.skip("stops and starts its own stand-in")
    server = start_stand_in(tmp_path / "nx", in_memory=False)
    yield server
    server.stop()


async def test_a_lost_database_answers_503_and_recovers_by_itself(tmp_path, restartable_mongo):
    uri = restartable_mongo.database_uri("parley") + "?serverSelectionTimeoutMS=1000&timeoutMS=2000"
    async for parley in start_parley(tmp_path / "data", store=uri):
        ids = parley.ids(SID)
        await parley.ask(SID, "Hello")
        restartable_mongo.stop()
        down = await parley.get("history", **ids)
        assert down.status_code == 503
        assert down.json() == {"success": False, "code": "unavailable",
                               "error": "The database is unavailable; please try again."}
        assert (await parley.client.get("/readyz")).status_code == 503
        restartable_mongo.start()
        deadline = time.monotonic() + 30
        while (back := await parley.get("history", **ids)).status_code != 200:
            assert time.monotonic() < deadline, "the store did not recover"
            await asyncio.sleep(0.1)
        assert [m["role"] for m in back.json()["messages"]] == ["visitor", "ai"]


def test_the_cli_reaches_a_server_on_mongodb(tmp_path, mongo_uri):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PARLEY_STORE": mongo_uri,
                                                          "PARLEY_DATA_DIR": str(tmp_path)})

    def cli(*args: str) -> str:
        result = run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    site = json.loads(cli("site", "create", "--name", "On Mongo", "--json"))
    cli("canned", "add", "--site", site["site_key"], "--shortcut", "hi", "Hello from the CLI")
    assert "/hi" in cli("canned", "list", "--site", site["site_key"])
    # It reads the conversations there too: a session the site never saw is refused.
    unseen = run("operator", "say", "--site", site["site_key"], "--session", SID, "Hello from the CLI")
    assert unseen.returncode == 2 and "no visitor with that session id" in unseen.stderr
    missing = subprocess.run([sys.executable, "-m", "server", "operator", "say", "--site", "sk_" + "x" * 30,
                              "--session", SID, "hi", "--store", mongo_uri], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "MongoDB database" in missing.stderr and "--store" in missing.stderr


def test_a_server_that_cannot_reach_mongodb_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir", str(tmp_path),
                             "--store", "mongodb://127.0.0.1:1/shop?timeoutMS=300&serverSelectionTimeoutMS=300"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in errors if line.startswith("error: cannot reach MongoDB for database 'shop'")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
