"""supervisord as shipped, two processes on MongoDB (the stand-in, or PARLEY_TEST_MONGO_URI): they hear
each other, and a process killed with -9 is restarted without losing a stored message."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.test_supervisord import cli, start_cluster


@pytest.fixture
def mongo_cluster(tmp_path, mongo_uri):
    env = {"PARLEY_STORE": mongo_uri}
    for base_url, data_dir, site_key in start_cluster(tmp_path, env):
        yield base_url, data_dir, site_key, env


def serving_pids(base_url: str, want: int, seconds: float = 30) -> set[int]:
    """The pids answering on the shared port, once `want` different ones have answered."""
    pids: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(pids) < want:
        assert time.monotonic() < deadline, f"only {pids} answered"
        try:
            with httpx.Client(timeout=2) as client:  # a new connection each time, spread by the kernel
                pids.add(client.get(f"{base_url}/healthz").json()["pid"])
        except httpx.HTTPError:
            time.sleep(0.05)
    return pids


def held_somewhere(base_url: str) -> bool:
    """Whether the process a new connection reaches holds a request (some connection reaches it)."""
    with httpx.Client(timeout=2) as client:
        return client.get(f"{base_url}/healthz").json()["held"] > 0


def test_two_processes_on_mongodb_hear_each_other_and_survive_a_kill(mongo_cluster):
    base_url, data_dir, site_key, env = mongo_cluster
    sid = "sess_mongocluster000000"
    ids = {"site_key": site_key, "session_id": sid}
    first_pids = serving_pids(base_url, 2)

    for n in range(3):  # each lands on whichever process the kernel picks
        answer = httpx.post(f"{base_url}/api/v1/chat/stream", json={**ids, "message": f"question {n}"},
                            timeout=30)
        assert answer.status_code == 200 and '"type":"done"' in answer.text

    # A visitor held by one process; an operator writes through another one (the CLI).
    result: dict = {}

    def hold() -> None:
        with httpx.Client(timeout=40) as client:
            result["body"] = client.get(f"{base_url}/api/v1/chat/operator-messages",
                                        params={**ids, "wait": 25}).json()
            result["at"] = time.monotonic()

    waiter = threading.Thread(target=hold)
    waiter.start()
    deadline = time.monotonic() + 20
    while not held_somewhere(base_url):
        assert time.monotonic() < deadline, "the visitor's request was never held"
    cli(data_dir, "operator", "say", "--site", site_key, "--session", sid, "--name", "Ana", "Hello",
        env=env)
    written = time.monotonic()
    waiter.join(timeout=30)
    assert result["body"]["messages"][0]["content"] == "Hello"
    assert result["at"] - written < 1.0

    victim = min(first_pids)
    os.kill(victim, signal.SIGKILL)
    after = serving_pids(base_url, 2, seconds=60)  # supervisord starts a new one in its place
    assert victim not in after

    history = httpx.get(f"{base_url}/api/v1/chat/history", params=ids, timeout=10).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"] * 3 + ["operator"]
    answer = httpx.post(f"{base_url}/api/v1/chat/stream", json={**ids, "message": "still there?"}, timeout=30)
    assert answer.status_code == 200 and '"type":"done"' in answer.text
    for _ in range(6):  # whichever process answers, nothing is missing
        with httpx.Client(timeout=10) as client:
            again = client.get(f"{base_url}/api/v1/chat/history", params=ids).json()["messages"]
        assert len(again) == 9 and [m["id"] for m in again] == sorted(m["id"] for m in again)
