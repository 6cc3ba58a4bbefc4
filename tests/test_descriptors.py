"""Descriptors and slow clients: out of open files, the server says so once in a while, keeps its
log small, and serves again as soon as idle connections time out."""

from __future__ import annotations

import socket
import time

import httpx

from tests.processes import server_process
from tests.waiting import eventually_sync


def test_the_open_file_limit_is_raised_at_start(tmp_path):
    with server_process(tmp_path, fd_limits=(200, 400)) as server:
        eventually_sync(lambda: "open-file limit raised from 200 to 400" in server.log, timeout=10)


def test_out_of_descriptors_it_logs_once_and_recovers_when_idle_clients_time_out(tmp_path):
    with server_process(tmp_path, "--header-timeout", "1", fd_limits=(64, 64)) as server:
        # More idle connections than descriptors: each connects (the kernel queues it) and never
        # sends a request.
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(150)]
        try:
            eventually_sync(lambda: "cannot accept connections" in server.log, timeout=20)
            started = time.monotonic()
            response = httpx.get(f"{server.base_url}/healthz", timeout=60)
            assert response.status_code == 200
            print(f"served after {time.monotonic() - started:.1f} s")
        finally:
            for sock in idle:
                sock.close()
        assert "Traceback" not in server.log
        assert server.log.count("cannot accept connections") <= 3
        assert len(server.log) < 10_000
