"""A real `python -m server serve` in its own process, for what only a separate process shows:
a crash (kill -9), its own descriptor limit, its log."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)  # its log (stdout and stderr), as it comes

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)


# Starts the server under given open-file limits (soft, hard), as a shell's `ulimit -n` would.
LIMITED_LAUNCHER = ("import os, resource, sys; "
                    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'server', *sys.argv[3:]])")


@contextlib.contextmanager
def server_process(data_dir: Path, *args: str, fd_limits: tuple[int, int] | None = None,
                   **popen: Any) -> Iterator[ServerProcess]:
    """Serve `data_dir` on a free port; killed (if still alive) on exit."""
    serve = ["serve", "--port", "0", "--data-dir", str(data_dir), *args]
    if fd_limits is None:
        command = [sys.executable, "-m", "server", *serve]
    else:
        command = [sys.executable, "-c", LIMITED_LAUNCHER, *map(str, fd_limits), *serve]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, **popen)
    assert process.stdout is not None
    lines: list[str] = []
    port: int | None = None
    for line in process.stdout:  # the banner comes first; startup logs may precede it
        lines.append(line)
        match = re.search(r"serving on http://[^ ]+:(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    if port is None:
        process.wait(10)
        process.stdout.close()
        raise AssertionError("the server did not start:\n" + "".join(lines))
    # Keep reading so the pipe never fills and the test can read the log.
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        yield ServerProcess(process, port, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(10)
        reader.join(10)
        process.stdout.close()
