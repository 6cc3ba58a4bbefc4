"""The production shape: supervisord runs several processes on one port over one data directory."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import tornado.testing

from tests.waiting import eventually_sync

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "server", *args, "--data-dir", str(data_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def cluster(tmp_path):
    yield from start_cluster(tmp_path)


def start_cluster(tmp_path: Path, env: dict[str, str] | None = None):
    """supervisord.conf as shipped, pointed at a temporary data directory and a free port, with
    `env` added to the processes' environment (e.g. PARLEY_STORE)."""
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conf = (ROOT / "supervisord.conf").read_text()
    conf = conf.replace("%(here)s/.venv/bin/python", sys.executable)
    conf = conf.replace("%(here)s/data", str(data_dir)).replace("directory=%(here)s", f"directory={ROOT}")
    conf = re.sub(r'PARLEY_PORT="\d+"', f'PARLEY_PORT="{port}"', conf)
    conf = re.sub(r"numprocs=\d+", "numprocs=2", conf)
    extra = "".join(f',{name}="{value}"' for name, value in (env or {}).items())
    conf = re.sub(r"^(environment=.*)$", lambda m: m.group(1) + extra, conf, flags=re.M)
    # As shipped, unless this machine's hard limit is lower (supervisord would refuse to start).
    minfds = min(int(re.search(r"minfds=(\d+)", conf).group(1)),
                 resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    conf = re.sub(r"minfds=\d+", f"minfds={minfds}", conf)
    conf_path = tmp_path / "supervisord.conf"
    conf_path.write_text(conf)
    site = json.loads(cli(data_dir, "site", "create", "--name", "Cluster", "--json", env=env))
    supervisord = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.1)
        yield base_url, data_dir, site["site_key"]
    finally:
        supervisord.send_signal(signal.SIGTERM)
        supervisord.wait(timeout=30)


def test_two_processes_serve_one_port_and_hear_each_other(cluster):
    base_url, data_dir, site_key = cluster
    pids = set()
    deadline = time.monotonic() + 15
    while len(pids) < 2 and time.monotonic() < deadline:
        with httpx.Client() as client:  # a new connection each time, spread by the kernel
            pids.add(client.get(f"{base_url}/healthz").json()["pid"])
    assert len(pids) == 2

    sid = "sess_cluster0000000000"
    ids = {"site_key": site_key, "session_id": sid}
    answer = httpx.post(f"{base_url}/api/v1/chat/stream", json={**ids, "message": "hello"}, timeout=10)
    assert answer.status_code == 200 and '"type":"done"' in answer.text
    for _ in range(10):  # whichever process answers, the conversation is the same
        with httpx.Client() as client:
            history = client.get(f"{base_url}/api/v1/chat/history", params=ids).json()
            assert [m["role"] for m in history["messages"]] == ["visitor", "ai"]

    sent = threading.Event()
    with httpx.Client(timeout=30, event_hooks={"request": [lambda request: sent.set()]}) as client:
        result: dict = {}

        def hold() -> None:
            result["body"] = client.get(f"{base_url}/api/v1/chat/operator-messages",
                                        params={**ids, "wait": 20}).json()
            result["at"] = time.monotonic()

        waiter = threading.Thread(target=hold)
        waiter.start()
        assert sent.wait(10)
        # The CLI takes far longer to start than the server takes to hold the request; were it
        # first, the held read would find the message at once, which passes for the same reason.
        cli(data_dir, "operator", "say", "--site", site_key, "--session", sid, "--name", "Ana", "Hello")
        written = time.monotonic()
        waiter.join(timeout=30)
    assert result["body"]["messages"][0]["content"] == "Hello"
    assert result["at"] - written < 5  # rung at once, else polled every 100 ms; loose for a loaded machine
    assert os.path.exists(data_dir / "parley.sqlite3")
    # supervisorctl reaches supervisord through the conf's control socket (a process counts as
    # RUNNING once it has been up for the conf's startsecs).
    def both_running() -> bool:
        status = subprocess.run([str(BIN / "supervisorctl"), "-c", str(data_dir.parent / "supervisord.conf"),
                                 "status"], capture_output=True, text=True, timeout=30)
        return status.stdout.count("RUNNING") == 2

    eventually_sync(both_running, timeout=30, what="supervisorctl to list both processes RUNNING")
