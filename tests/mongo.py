"""A MongoDB-wire server for the tests: the nx-27017 stand-in started here, or a real replica set.

With PARLEY_TEST_MONGO_URI set (e.g. mongodb://127.0.0.1:27017/?replicaSet=rs0) the tests use that
server instead; each test gets its own database either way, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest
import tornado.testing

NX_START_SECONDS = 20


@dataclass
class MongoServer:
    """Where the tests reach MongoDB; `database_uri` names a fresh database."""

    base_uri: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    run_dir: Path | None = None
    db_arg: str = "memory"  # --db of the stand-in: in memory, or a file that outlives a restart

    def database_uri(self, name: str | None = None) -> str:
        name = name or f"parley_test_{secrets.token_hex(6)}"
        parts = urlsplit(self.base_uri)
        return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))

    @property
    def is_stand_in(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def start(self) -> None:
        """(Re)start the stand-in on its port, over its data."""
        run_dir = self.run_dir
        assert run_dir is not None
        self.process = subprocess.Popen(
            [nx_binary(), "--db", self.db_arg, "--host", "127.0.0.1", "-p", str(self.port),
             "--pid-file", str(run_dir / "nx.pid"), "--log-file", str(run_dir / "nx.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=run_dir)
        wait_for_port(self.port, self.process)


def nx_binary() -> str:
    found = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or shutil.which("nx-27017")
    if not found:
        raise RuntimeError("nx-27017 is not installed: scripts/test installs requirements-dev.txt")
    return found


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + NX_START_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nx-27017 exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("nx-27017 did not start listening") from None
            time.sleep(0.02)


def start_stand_in(run_dir: Path, *, in_memory: bool = True) -> MongoServer:
    """nx-27017 on a free port; `in_memory=False` keeps its data in a file across restarts."""
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    run_dir.mkdir(parents=True, exist_ok=True)
    server = MongoServer(f"mongodb://127.0.0.1:{port}/", port=port, run_dir=run_dir,
                         db_arg="memory" if in_memory else str(run_dir / "nx.db"))
    server.start()
    return server


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory) -> Iterator[MongoServer]:
    uri = os.environ.get("PARLEY_TEST_MONGO_URI")
    if uri:
        yield MongoServer(uri)
        return
    server = start_stand_in(tmp_path_factory.mktemp("nx-27017"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo_uri(mongo_server: MongoServer) -> Iterator[str]:
    """A fresh database on the session's MongoDB server, dropped afterwards."""
    name = f"parley_test_{secrets.token_hex(6)}"
    yield mongo_server.database_uri(name)
    if not mongo_server.is_stand_in:  # the stand-in's memory goes with it
        with pymongo.MongoClient(mongo_server.base_uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(name)
