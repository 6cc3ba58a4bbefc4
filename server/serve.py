"""Running the server: sockets with a deep backlog, graceful shutdown, periodic housekeeping."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import time
from typing import Awaitable, Callable

import tornado.netutil
from tornado.ioloop import PeriodicCallback

from handlers.body_limit import DEFAULT_BODY_LIMIT
from server.ai.check import announce_check, describe_model
from server.ai.settings import global_model_config
from server.app import ParleyApplication, Services, build_services, make_app
from server.accounts import dashboard_lines
from server.audit import CLI
from server.backends import describe
from server.config import Config, browser_host
from server.demo import ensure_demo_site
from server.errors import Unavailable
from server.listener import HTTPServer, raise_open_file_limit
from server.proxies import TrustedProxies
from server.readiness import Readiness

log = logging.getLogger(__name__)

EVENT_RETENTION_SECONDS = 600
SHUTDOWN_GRACE_SECONDS = 5


# Container objects allocated, less those freed, before the youngest generation is collected
# (Python's default is 700). Under load that count swings past 700 within a turn of the loop,
# though nearly all of it is freed soon after: at 1,000 operator messages a second to 1,000 held
# requests the default ran 30-90 young collections a second and, through them, a full one every
# 1.5-5 s that paused the loop for 100-180 ms; at 7,000 none ran in 10 s of it, and the
# store-to-visitor p99 fell from 126-171 ms to 26-86 in turns (docs/performance.md, change 43).
# Up to 7,000 more objects wait for a collection.
YOUNG_COLLECTION_THRESHOLD = 7000


def tune_garbage_collection() -> None:
    """What starting made (modules, the app, knowledge indexes) lives as long as the process: move
    it out of the collector's sight, so a full collection walks only what requests made. With
    thousands of held requests, full collections otherwise pause the loop for hundreds of ms.
    Then collect less often (YOUNG_COLLECTION_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def start_http_server(services: Services) -> tuple[HTTPServer, int]:
    """Listen and return the server and its port (useful when the port asked for is 0)."""
    config = services.config
    server = HTTPServer(
        make_app(services),
        # Each request's own limit is set as its headers arrive (its route's, handlers/body_limit.py);
        # this small default is the rest's.
        max_body_size=DEFAULT_BODY_LIMIT,
        max_header_size=64 * 1024,
        body_timeout=60,
        # Tornado applies this both to the wait for a request's headers (a client dribbling them
        # holds a descriptor) and to an idle keep-alive connection.
        idle_connection_timeout=config.header_timeout,
        connections_per_address=config.max_connections_per_address,
        uncapped=TrustedProxies(config.proxy_networks),
    )
    # A deep backlog: thousands of widgets reconnect at once after a deploy or a network blip.
    sockets = tornado.netutil.bind_sockets(
        config.port, config.host, backlog=config.backlog, reuse_port=config.reuse_port
    )
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def serve(config: Config) -> None:
    raise_open_file_limit()
    services = await build_services(config)
    demo = None
    if config.demo:
        demo, created = await ensure_demo_site(services.sites, services.store)
        if created:
            log.info("created the demo site %s", demo.site_key)
    try:
        server, port = start_http_server(services)
    except OSError as exc:  # the port is taken (another server, or one still shutting down)
        await services.close()
        raise Unavailable(f"cannot listen on {config.host}:{config.port}: {exc.strerror}. Stop what "
                          "uses it, or choose another port with --port.") from None
    tune_garbage_collection()
    base = f"http://{browser_host(config.host)}:{port}"
    lines = [f"Parley is serving on {base}  ({describe(config)})"]
    if demo is not None:
        lines += [f"  Demo page:     {base}/demo", f"  Demo site key: {demo.site_key}"]
    lines += await dashboard_lines(services, base)
    model = global_model_config(config)
    lines += [f"  Health:        {base}/healthz  (ready: {base}/readyz)",
              f"  AI:            {describe_model(model)}", "Stop with Ctrl-C."]
    print("\n".join(lines), flush=True)
    # Checked once, without holding up the start: a wrong key or model is said at once.
    checking = asyncio.create_task(announce_check(model)) if model is not None else None
    images = asyncio.create_task(announce_image_store(services.readiness, config.blobs))

    async def prune_events() -> None:
        await services.store.prune_events(time.time() - EVENT_RETENTION_SECONDS)

    async def apply_retention() -> None:
        await services.privacy.apply_retention(await services.sites.list(), actor=CLI)

    housekeeping = PeriodicCallback(functools.partial(
        housekeep, {"pruning old events": prune_events, "forgetting stale sign-in counts":
                    services.accounts.forget_stale, "retention": apply_retention}), 60_000)
    housekeeping.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(server, services, config.shutdown_grace)
    housekeeping.stop()
    if checking is not None:
        checking.cancel()
    images.cancel()
    await services.close()


async def housekeep(jobs: dict[str, Callable[[], Awaitable[None]]]) -> None:
    """Each job on its own: one that fails (a database locked by another process) is a line in
    the log, not a traceback, and does not keep the others from running."""
    for what, job in jobs.items():
        try:
            await job()
        except Unavailable as exc:
            log.warning("housekeeping: %s failed, tried again in a minute: %s", what, exc)
        except Exception:
            log.exception("housekeeping: %s failed, tried again in a minute", what)


async def announce_image_store(readiness: Readiness, where: str) -> None:
    """A bucket that is missing or refuses the credentials is said at start, not at the first
    visitor's upload."""
    if not await readiness.images_ok():
        print(f"WARNING: images cannot be stored in {where}: uploads will fail until it works "
              "(the log says why; /readyz reports it too).", flush=True)
        log.warning("image store check failed for %s", where)


async def drain(server: HTTPServer, services: Services, grace: float) -> None:
    """Stop accepting; answer held reads now (empty, the widget comes back to another process);
    let answers finish for `grace` seconds, then cut the rest with an `error` before `done`;
    let the last responses go out; close what is left."""
    log.info("shutting down: answers in progress get %g s", grace)
    server.stop()
    await services.hub.end_holds()
    await services.chat.drain(grace)
    app = server.request_callback
    if isinstance(app, ParleyApplication) and not await app.idle(SHUTDOWN_GRACE_SECONDS):
        log.warning("%d request(s) still in progress after %d s; closing them", app.in_flight,
                    SHUTDOWN_GRACE_SECONDS)
    try:
        await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning("some connections did not close within %d s", SHUTDOWN_GRACE_SECONDS)
    log.info("stopped")
