"""Operator messages from another process: through Parley's store and events feed (as the CLI's
`operator say` does), or, for the ceiling, over HTTP to its control port. Prints one JSON result."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from urllib.parse import urlencode

from bench.load_held import read_response
from bench.pushing import push_at_rate

CEILING_CONNECTIONS = 100


class KeptAlive:
    """A few kept-alive HTTP/1.1 connections taking POSTs in turn (a new connection per message
    would measure the connects, not the server)."""

    def __init__(self, base_url: str, size: int) -> None:
        self.host, _, port = base_url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.queue: asyncio.Queue[tuple[str, asyncio.Future[None]]] = asyncio.Queue()
        self.workers = [asyncio.create_task(self._work()) for _ in range(size)]

    async def post(self, target: str) -> None:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((target, future))
        await future

    async def _work(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        while True:
            target, future = await self.queue.get()
            writer.write(f"POST {target} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n".encode())
            try:
                status, _ = await read_response(reader)
            except Exception as exc:  # noqa: BLE001  (handed to the caller, who counts it)
                future.set_exception(exc)
                return
            if status == 200:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(f"HTTP {status}"))

    async def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parley-data", type=Path, help="Parley's data directory")
    parser.add_argument("--site-key")
    parser.add_argument("--ceiling", help="the ceiling's control URL, http://127.0.0.1:PORT")
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--phase", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    plan = {"sessions": args.sessions, "rate": args.rate, "seconds": args.seconds, "phase": args.phase}
    if args.parley_data:
        from server.app import build_services
        from server.config import Config

        config = dataclasses.replace(Config(data_dir=args.parley_data), log_level="WARNING")
        services = await build_services(config)
        site = await services.sites.get(args.site_key)

        async def send(session_id: str, text: str) -> None:
            await services.operators.say(site, session_id, text, operator_name="Bench")

        result = await push_at_rate(send, **plan)
        await services.close()
    else:
        pool = KeptAlive(args.ceiling, CEILING_CONNECTIONS)

        async def send(session_id: str, text: str) -> None:
            await pool.post(f"/bench/say?{urlencode({'session_id': session_id, 'text': text})}")

        result = await push_at_rate(send, **plan)
        await pool.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
