"""SIGTERM drains a real server process: held reads answer, answers finish or end with an error the
widget retries on, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import AsyncIterator

import httpx
import httpx_sse
import pytest

from tests.test_cli_config import cli

ROOT = Path(__file__).resolve().parent.parent
SID = "sess_shutdown000000000"


class Server:
    def __init__(self, process: asyncio.subprocess.Process, base_url: str, site_key: str) -> None:
        self.process = process
        self.base_url = base_url
        self.site_key = site_key

    def ids(self, session_id: str = SID, **extra: object) -> dict[str, object]:
        return {"site_key": self.site_key, "session_id": session_id, **extra}


async def start_server(data_dir: Path, *flags: str) -> AsyncIterator[Server]:
    site = json.loads(cli("site", "create", "--name", "Shop", "--json", "--data-dir", str(data_dir)).stdout)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir", str(data_dir), *flags,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)  # type: ignore[union-attr]
        match = re.search(r"serving on (http://\S+)", line.decode())
        assert match, line
        yield Server(process, match.group(1), site["site_key"])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def slow_answers(tmp_path: Path) -> AsyncIterator[Server]:
    # Each chunk of the offline answer comes 0.3 s after the last, and answers get 0.2 s to finish.
    async for server in start_server(tmp_path, "--offline-chunk-delay", "0.3", "--shutdown-grace", "0.2"):
        yield server


@pytest.fixture
async def patient(tmp_path: Path) -> AsyncIterator[Server]:
    async for server in start_server(tmp_path, "--offline-chunk-delay", "0.05", "--shutdown-grace", "30"):
        yield server


async def stream_after_first_chunk(client: httpx.AsyncClient, server: Server, message_id: str,
                                   first_chunk: asyncio.Event) -> list[dict]:
    events = []
    body = server.ids(message="Do you ship to Canada?", message_id=message_id)
    async with httpx_sse.aconnect_sse(client, "POST", "/api/v1/chat/stream", json=body) as source:
        async for event in source.aiter_sse():
            events.append(json.loads(event.data))
            first_chunk.set()
    return events


async def test_sigterm_answers_held_reads_cuts_streams_with_an_error_and_exits_0(slow_answers):
    server = slow_answers
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        first_chunk = asyncio.Event()
        stream = asyncio.create_task(stream_after_first_chunk(client, server, "m_cut", first_chunk))
        await asyncio.wait_for(first_chunk.wait(), 15)
        sent = asyncio.Event()

        async def on_request(request: httpx.Request) -> None:
            sent.set()

        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as other:
            # A kept-alive connection first: the held read goes over it whatever the listener does.
            assert (await other.get("/healthz")).status_code == 200
            other.event_hooks["request"] = [on_request]
            held = asyncio.create_task(other.get("/api/v1/chat/operator-messages",
                                                 params=server.ids(session_id="sess_heldread0000000000",
                                                                   wait=25)))
            await asyncio.wait_for(sent.wait(), 5)
            started = asyncio.get_running_loop().time()
            server.process.send_signal(signal.SIGTERM)
            response = await asyncio.wait_for(held, 15)
        assert response.status_code == 200
        assert response.json() == {"success": True, "messages": [], "mode": "ai"}
        # ... and closes the connection: the client's next request goes to a new one (another
        # process), not straight back here for another answer at once.
        assert response.headers["connection"] == "close"
        assert asyncio.get_running_loop().time() - started < 10  # not the 25 s wait

        events = await asyncio.wait_for(stream, 15)
        types = [e["type"] for e in events]
        assert types[0] == "chunk" and types[-2:] == ["error", "done"], types
        assert events[-2]["code"] == "restarting"
    assert await asyncio.wait_for(server.process.wait(), 15) == 0
    stderr = (await server.process.stderr.read()).decode()  # type: ignore[union-attr]
    assert "Traceback" not in stderr
    assert "cut 1 answer(s)" in stderr


async def test_sigterm_lets_an_answer_within_the_grace_period_finish(patient):
    server = patient
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        first_chunk = asyncio.Event()
        stream = asyncio.create_task(stream_after_first_chunk(client, server, "m_whole", first_chunk))
        await asyncio.wait_for(first_chunk.wait(), 15)
        server.process.send_signal(signal.SIGTERM)
        events = await asyncio.wait_for(stream, 20)
        assert [e["type"] for e in events][-1] == "done"
        assert "error" not in [e["type"] for e in events]
    assert await asyncio.wait_for(server.process.wait(), 15) == 0
