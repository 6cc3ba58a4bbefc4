"""Parley serving the widget API as `python -m server` does, plus a control port for the benchmark:
GET /bench/stats (held requests, GC pauses) and POST /bench/push (operator messages written in this
process through OperatorService.say, the call the dashboard and the CLI make).

Run by `scripts/bench held`; prints {"port": ..., "control": ..., "site_key": ...} when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import tornado.web

from bench.ceiling_longpoll import listen
from bench.common import GcPauses, bench_session
from bench.pushing import push_at_rate
from server.app import Services, build_services
from server.config import Config
from server.serve import tune_garbage_collection, start_http_server
from server.store.models import Site


PAGE = "https://bench.example/pricing"
PAGES_AT_ONCE = 500


class Control(tornado.web.RequestHandler):
    def initialize(self, services: Services, site: Site, gc_pauses: GcPauses) -> None:
        self.services = services
        self.site = site
        self.gc_pauses = gc_pauses

    def get(self, action: str) -> None:
        self.finish({"waiters": self.services.hub.subscriber_count, "gc": self.gc_pauses.as_dict()})

    async def post(self, action: str) -> None:
        arg = self.get_query_argument

        async def send(session_id: str, text: str) -> None:
            await self.services.operators.say(self.site, session_id, text, operator_name="Bench")

        self.finish(await push_at_rate(send, sessions=int(arg("sessions")), rate=float(arg("rate")),
                                       seconds=float(arg("seconds")), phase=arg("phase")))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=0,
                        help="visitors whose conversations exist before they connect, as the widget's "
                             "page-load request makes them (it says which page it is on)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gc_pauses = GcPauses()
    config = dataclasses.replace(Config(data_dir=args.data_dir, port=0), log_level="WARNING")
    services = await build_services(config)
    site = await services.sites.create("bench")
    for start in range(0, args.sessions, PAGES_AT_ONCE):
        await asyncio.gather(*(services.store.ensure_conversation(site.id, bench_session(n), {"page_url": PAGE})
                               for n in range(start, min(args.sessions, start + PAGES_AT_ONCE))))
    _, port = start_http_server(services)
    control = listen(tornado.web.Application([(r"/bench/(\w+)", Control, {
        "services": services, "site": site, "gc_pauses": gc_pauses})]))
    tune_garbage_collection()  # as `python -m server` does once it listens
    print(json.dumps({"port": port, "control": control, "site_key": site.site_key}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
