"""Dashboard fan-out: T operator tabs on the live feed (`GET /dashboard/events`) while V visitors
chat, R messages a second between them, answered by the offline answerer (no model, no network).

Per run: the delay from a visitor message being stored to each tab receiving its `message` event
(p50/p99/max over every message and every tab), deliveries missing, messages stored per second,
the server's CPU per message and peak RSS. Beside it the ceiling: a minimal Tornado server that
takes each message over HTTP and writes it to every tab's event stream, with no store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    Child,
    Sampler,
    children,
    cpu_seconds,
    free_port,
    markdown_table,
    python_module,
    ratio,
    start_child,
)
from bench.load_fanout import PASSWORD
from bench.stream import start_http_child

EMAIL = "fanout@bench.example"


def start_parley(workdir: Path, processes: int = 1) -> tuple[list[Child], str]:
    """`processes` servers on one data directory (as under supervisord), each on its own port."""
    data = workdir / "parley-data"

    def cli(*args: Any, stdin: str | None = None) -> str:
        return subprocess.run(python_module("server", *args, "--data-dir", data), input=stdin,
                              check=True, capture_output=True, text=True, timeout=120).stdout

    site_key = json.loads(cli("site", "create", "--name", "bench", "--json"))["site_key"]
    cli("operator", "add", "--email", EMAIL, "--name", "Bench", "--role", "admin", "--password-stdin",
        stdin=PASSWORD + "\n")
    servers = []
    for n in range(processes):
        port = free_port()
        servers.append(start_http_child(f"parley-{n}", python_module(
            "server", "--data-dir", data, "--port", port, "--log-level", "WARNING"),
            f"http://127.0.0.1:{port}/healthz", port, workdir / f"parley-{n}.log"))
    return servers, site_key


# target: (server, processes); with two, the tabs watch one process and the visitors chat with the other
TARGETS = {"ceiling": ("ceiling", 1), "parley": ("parley", 1), "parley, 2 processes": ("parley", 2)}


async def cell(target: str, tabs: int, visitors: int, rate: float, seconds: float) -> dict[str, Any]:
    server, processes = TARGETS[target]
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp, children() as procs:
        if server == "parley":
            servers, site_key = await asyncio.to_thread(start_parley, Path(tmp), processes)
        else:
            servers, site_key = [start_child("ceiling", python_module("bench.ceiling_fanout"))], "ceiling"
        procs.extend(servers)
        ports = [child.ready["port"] for child in servers]
        load = await asyncio.to_thread(start_child, "clients", python_module(
            "bench.load_fanout", "--port", ports[0], "--visitor-port", ports[-1], "--site-key", site_key,
            "--email", EMAIL, "--tabs", tabs, "--visitors", visitors, "--rate", rate, "--seconds", seconds,
            *(["--ceiling"] if server == "ceiling" else
              ["--store-db", Path(tmp) / "parley-data" / "parley.sqlite3"])), ready_timeout=120)
        procs.append(load)
        before = sum(cpu_seconds(child.pid) for child in servers)
        with Sampler(*(child.pid for child in servers)) as memory:
            result = await asyncio.to_thread(load.read_json, seconds + 120)
        used = sum(cpu_seconds(child.pid) for child in servers) - before
    result.update(target=target, tabs=tabs, visitors=visitors, rate=rate,
                  peak_rss_mb=round(memory.peak_kb / 1024, 1),
                  server_cpu_ms_per_message=round(used / max(1, result["stored"]) * 1000, 2))
    return result


async def run(quick: bool) -> dict[str, Any]:
    tabs = 50
    visitors, rate, seconds = (200, 20.0, 10.0) if quick else (1000, 50.0, 30.0)
    cells = []
    for target in TARGETS:
        print(f"fanout: {target}, {tabs} tabs, {visitors} visitors, {rate:g} messages/s ...", flush=True)
        cells.append(await cell(target, tabs, visitors, rate, seconds))
    return {"tabs": tabs, "visitors": visitors, "rate": rate, "seconds": seconds, "cells": cells}


def tables(data: dict[str, Any]) -> str:
    ceiling = next((c for c in data["cells"] if c["target"] == "ceiling"), None)
    rows = []
    for c in data["cells"]:
        delay = c["delay_ms"]
        rows.append([c["target"], c["tabs"], c["visitors"], c["rate"], c["stored_per_s"], c["deliveries"],
                     c["missing"], delay["p50"], delay["p99"], delay["max"],
                     ratio(delay["p99"], ceiling["delay_ms"]["p99"]) if ceiling else None,
                     c["server_cpu_ms_per_message"], c["peak_rss_mb"], sum(c["failures"].values())])
    table = markdown_table(["server", "tabs", "visitors", "offered/s", "stored/s", "deliveries",
                            "missing", "store-to-tab p50 ms", "p99 ms", "max ms", "p99 × ceiling",
                            "server CPU ms per message", "peak RSS MB", "failed"], rows)
    return (f"{data['tabs']} tabs on the live feed; {data['visitors']} visitors send "
            f"{data['rate']:g} messages/s in all for {data['seconds']:g} s.\n\n{table}")
