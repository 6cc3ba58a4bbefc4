"""What every sub-benchmark shares: child processes, /proc readings, loopback addresses, tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def raise_open_file_limit() -> int:
    """Soft limit up to the hard one: thousands of held sockets need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loopback_addresses(count: int) -> list[str]:
    """`count` distinct source addresses in 127.0.0.0/16 (Linux answers all of 127/8 on lo).

    Parley caps held requests and writes per client address; spreading the simulated visitors over
    many addresses keeps those caps from shaping the measurement, as real visitors would."""
    return [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(max(1, count))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, p50, p99 and max of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50": _round(percentile(ms, 0.5)), "p99": _round(percentile(ms, 0.99)),
            "max": _round(max(ms) if ms else None)}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- processes ------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def process_tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue and len(pids) < 256:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children, in KB (0 when gone)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{member}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class Child:
    """A process the benchmark started; `ready` is the first JSON line it printed."""

    name: str
    process: subprocess.Popen[str]
    ready: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read_json(self, timeout: float) -> dict[str, Any]:
        return read_json_line(self.process, timeout, self.name)

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def read_json_line(process: subprocess.Popen[str], timeout: float, name: str) -> dict[str, Any]:
    """The next stdout line that is a JSON object; other lines are passed through to stderr."""
    import selectors

    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                break
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} exited (status {process.wait(5)}) before it answered")
            if line.startswith("{"):
                return json.loads(line)
            sys.stderr.write(f"[{name}] {line}")
    raise TimeoutError(f"{name} did not answer within {timeout:g} s")


def start_child(name: str, args: list[str], *, env: dict[str, str] | None = None,
                ready_timeout: float = 120, cwd: Path = ROOT) -> Child:
    """Start a process that prints one JSON line when it is ready; its stderr goes to ours."""
    process = subprocess.Popen(
        args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        ready = read_json_line(process, ready_timeout, name)
    except BaseException:
        process.kill()
        process.wait(5)
        raise
    return Child(name, process, ready)


def python_module(module: str, *args: Any) -> list[str]:
    return [PYTHON, "-m", module, *map(str, args)]


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Collects started children and stops them all, however the benchmark ends."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


class Sampler:
    """Samples the RSS of processes (their sum) while a measurement runs, to report its peak."""

    def __init__(self, *pids: int, interval: float = 0.25) -> None:
        self.pids, self.interval = pids, interval
        self.peak_kb = 0
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        self.peak_kb = max(self.peak_kb, sum(rss_kb(pid) for pid in self.pids))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._sample()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        self._sample()


async def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


# -- output ---------------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0],
            "load_average_1m": round(load[0], 2), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 2)


def bench_session(n: int) -> str:
    """The n-th simulated visitor's session id (valid for Parley: sess_ + 16 to 64 characters)."""
    return f"sess_bench{n:016d}"


class GcPauses:
    """Longest and total collector pause per generation, measured through gc.callbacks."""

    def __init__(self) -> None:
        import gc

        self.max_ms = [0.0, 0.0, 0.0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        pause = (time.perf_counter() - self._started) * 1000
        self.count[generation] += 1
        self.total_ms[generation] += pause
        self.max_ms[generation] = max(self.max_ms[generation], pause)

    def as_dict(self) -> dict[str, Any]:
        import gc

        return {"max_ms": [round(v, 2) for v in self.max_ms], "total_ms": [round(v, 1) for v in self.total_ms],
                "count": self.count, "tracked_objects": len(gc.get_objects())}
