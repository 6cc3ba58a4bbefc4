"""What the load benchmarks share: a real server in its own process, over a fresh data directory
with one site, and raw HTTP/1.1 requests that measure the server rather than a client library."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# BENCH_PROFILE=out.prof runs the server under cProfile and writes its profile there on exit.
PROFILE = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.app import build_services  # noqa: E402
from server.config import Config  # noqa: E402


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    site_key: str
    data_dir: Path

    def memory_mb(self) -> tuple[float, float]:
        """(resident now, resident at its highest) in MB, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        return int(values["VmRSS"]) / 1024, int(values["VmHWM"]) / 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _create_site(data_dir: Path) -> str:
    services = await build_services(Config(data_dir=data_dir))
    try:
        return (await services.sites.create("bench")).site_key
    finally:
        await services.close()


@contextlib.contextmanager
def server_process(*extra_args: str) -> Iterator[ServerProcess]:
    """`python -m server serve` on a free port over a new data directory; stopped on exit."""
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        site_key = asyncio.run(_create_site(data_dir))
        process = subprocess.Popen(
            [sys.executable, *PROFILE, "-m", "server", "serve", "--port", "0", "--data-dir", str(data_dir),
             "--log-level", "ERROR", *extra_args],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            match = re.search(r"http://[^:]+:(\d+)", first)
            if match is None:
                raise SystemExit(f"the server did not start: {first!r}")
            yield ServerProcess(process, int(match.group(1)), site_key, data_dir)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def raw_request(port: int, request: bytes, timeout: float = 60, *, source: str = "127.0.0.1") -> bytes:
    """Send one whole HTTP/1.1 request (Connection: close) from `source` (any 127.x.y.z is this
    machine, and the server sees each as its own client address); read the whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def get_request(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()


def status_of(response: bytes) -> int:
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "n=0"
    ms = sorted(s * 1000 for s in seconds)
    pick = lambda q: ms[min(len(ms) - 1, int(len(ms) * q))]  # noqa: E731
    return f"n={len(ms)} p50={pick(0.5):.0f} ms p95={pick(0.95):.0f} ms max={ms[-1]:.0f} ms"

