"""Held requests: N visitors holding `operator-messages?wait=30` on one Parley process, beside the
minimal Tornado long-poll server (the ceiling) at the same N.

For each server and N: RSS per held request; the delay from an operator message's write to its
visitor, with messages going to random visitors at each rate, written in the server's own process
and from another process (Parley: through the store and its events feed; the ceiling: over HTTP);
then everyone leaves at once and the held count and RSS are read again.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from typing import Any

import tornado.httpclient

from bench.common import (
    Child,
    children,
    cpu_seconds,
    markdown_table,
    python_module,
    ratio,
    rss_kb,
    start_child,
    wait_until,
)

HELD_PER_ADDRESS = 400  # Parley holds at most 500 requests per client address


async def control(child: Child, action: str, method: str = "GET", timeout: float = 120,
                  **query: Any) -> dict[str, Any]:
    from urllib.parse import urlencode

    url = f"http://127.0.0.1:{child.ready['control']}/bench/{action}?{urlencode(query)}"
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        url, method=method, body=b"" if method == "POST" else None, request_timeout=timeout)
    return json.loads(response.body)


async def waiters(child: Child) -> int:
    return (await control(child, "stats"))["waiters"]


async def settle_rss(pid: int, seconds: float = 1.0) -> int:
    await asyncio.sleep(seconds)
    return rss_kb(pid)


async def measure(kind: str, sessions: int, rates: list[int], seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {"server": kind, "held": sessions}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp, children() as procs:
        if kind == "parley":
            server = start_child("parley", python_module("bench.parley_held", "--data-dir", tmp,
                                                         "--sessions", sessions), ready_timeout=300)
        else:
            server = start_child("ceiling", python_module("bench.ceiling_longpoll"))
        procs.append(server)
        rss_idle = await settle_rss(server.pid)
        addresses = max(16, math.ceil(sessions / HELD_PER_ADDRESS))
        started = time.perf_counter()
        visitors = start_child("visitors", python_module(
            "bench.load_held", "--port", server.ready["port"], "--site-key", server.ready["site_key"],
            "--sessions", sessions, "--addresses", addresses), ready_timeout=300)
        procs.append(visitors)

        async def all_held() -> bool:
            return await waiters(server) >= sessions

        held_ok = await wait_until(all_held, 180, interval=0.25)
        result["connect_s"] = round(time.perf_counter() - started, 2)
        result["held_reached"] = await waiters(server)
        rss_held = await settle_rss(server.pid)
        result["rss_idle_mb"] = round(rss_idle / 1024, 1)
        result["rss_held_mb"] = round(rss_held / 1024, 1)
        result["kb_per_waiter"] = round((rss_held - rss_idle) / sessions, 2) if held_ok else None
        pushes = []
        for rate in rates:
            cpu = cpu_seconds(server.pid)
            pushes.append(await control(server, "push", "POST", timeout=seconds + 120, sessions=sessions,
                                        rate=rate, seconds=seconds, phase=f"in-{rate}"))
            await asyncio.sleep(1)
            pushes[-1].update(path="in-process", server_cpu_s=round(cpu_seconds(server.pid) - cpu, 2))
        for rate in rates:
            where = (["--parley-data", tmp, "--site-key", server.ready["site_key"]] if kind == "parley"
                     else ["--ceiling", f"http://127.0.0.1:{server.ready['control']}"])
            cpu = cpu_seconds(server.pid)
            pusher = start_child("pusher", python_module(
                "bench.pusher", *where, "--sessions", sessions, "--rate", rate, "--seconds", seconds,
                "--phase", f"cross-{rate}"), ready_timeout=seconds + 120)
            await asyncio.sleep(1.5)
            pushes.append({**pusher.ready, "path": "other process",
                           "server_cpu_s": round(cpu_seconds(server.pid) - cpu, 2)})
        result["gc_while_held"] = (await control(server, "stats"))["gc"]
        visitors.send("leave")
        seen = visitors.read_json(120)

        async def all_gone() -> bool:
            return await waiters(server) == 0

        await wait_until(all_gone, 60, interval=0.25)
        result["waiters_after_leaving"] = await waiters(server)
        result["rss_after_leaving_mb"] = round(await settle_rss(server.pid, 2.0) / 1024, 1)
        for push in pushes:
            push["delay_ms"] = seen["phases"].get(push["phase"], {"n": 0})
        result["pushes"] = pushes
        result["visitor_statuses"] = seen["statuses"]
        result["visitor_failures"] = seen["failures"]
    return result


async def run(quick: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    sizes = sizes or ([1000] if quick else [1000, 10000])
    rates = [100, 1000]
    seconds = 3.0 if quick else 4.0
    runs = []
    for sessions in sizes:
        for kind in ("ceiling", "parley"):
            print(f"held: {kind} with {sessions:,} held requests ...", flush=True)
            runs.append(await measure(kind, sessions, rates, seconds))
    return {"sizes": sizes, "rates": rates, "seconds_per_rate": seconds, "runs": runs}


def tables(data: dict[str, Any]) -> str:
    memory, delays = [], []
    by_key = {(r["server"], r["held"]): r for r in data["runs"]}
    for run in data["runs"]:
        ceiling = by_key.get(("ceiling", run["held"]), {})
        gc = run["gc_while_held"]
        memory.append([run["server"], run["held"], run["held_reached"], run["kb_per_waiter"],
                       ratio(run["kb_per_waiter"], ceiling.get("kb_per_waiter")),
                       run["rss_held_mb"], gc["max_ms"][2], gc["tracked_objects"],
                       run["waiters_after_leaving"], run["rss_after_leaving_mb"]])
        for push in run["pushes"]:
            delay = push["delay_ms"]
            delays.append([run["server"], run["held"], push["path"], push["offered_per_s"],
                           push["completed_per_s"], delay["n"], delay.get("p50"), delay.get("p99"),
                           delay.get("max"), push["skipped"] + push["errors"],
                           round(push["server_cpu_s"] * 1000 / max(1, push["completed"]), 2)])
    return "\n\n".join([
        markdown_table(["server", "held", "reached", "KB per held", "× ceiling", "RSS held MB",
                        "max gen-2 GC ms", "GC-tracked objects", "held after leaving",
                        "RSS after leaving MB"], memory),
        markdown_table(["server", "held", "written from", "offered/s", "stored/s", "delivered",
                        "p50 ms", "p99 ms", "max ms", "skipped+failed",
                        "server CPU ms per message"], delays),
    ])
