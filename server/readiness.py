"""What GET /readyz reports: whether this process can serve now. A load balancer or supervisor
takes a process that is not ready out of rotation, so the answer must come even when what it
checks hangs (a stuck disk, a database that accepts connections but never answers)."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from server.blobs import BlobStore
from server.errors import Unavailable
from server.feed import EventFeed
from server.store.base import Store
from server.uploads import Uploads

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0  # each check's answer, or "not ready"


class Readiness:
    def __init__(self, store: Store, feed: EventFeed, uploads: Uploads, blobs: BlobStore, *,
                 timeout: float = CHECK_SECONDS) -> None:
        self.store = store
        self.feed = feed
        self.uploads = uploads
        self.blobs = blobs
        self.timeout = timeout
        self._checks: dict[str, asyncio.Future[bool]] = {}

    async def report(self) -> dict[str, str]:
        """{"status": "ok" | "unavailable", and each check's finding}."""
        store, disk, images = await asyncio.gather(
            self._within("the store", self._shared("store", lambda: _works(self.store.ping()))),
            # Uploads are spooled under the data directory: a full or read-only disk fails them all.
            self._within("the data directory",
                         self._shared("disk", lambda: asyncio.to_thread(self.uploads.can_write))),
            self.images_ok())
        # A process that cannot hear the others would leave its held visitors waiting.
        feed = self.feed.healthy
        return {"status": "ok" if store and feed and disk and images else "unavailable",
                "store": "ok" if store else "unreachable",
                "events": "ok" if feed else "down",
                "disk": "ok" if disk else "not writable",
                "images": "ok" if images else "unreachable"}

    async def images_ok(self) -> bool:
        """Whether images can be stored: a bucket that is missing or refuses the credentials fails
        every image upload (a local image store is the disk check's)."""
        return await self._within("the image store", _works(self.blobs.check()))

    def _shared(self, what: str, start: Callable[[], Awaitable[bool]]) -> Awaitable[bool]:
        """The check of `what` under way, or a new one. A stuck check keeps what it runs on (the
        disk's: a thread of the few that sign-ins, image checks and indexing use; the store's: its
        one writer thread, waiting on a lock), so probes arriving meanwhile wait on it rather than
        each starting another. Shielded: a probe that gives up does not cancel it for the others."""
        check = self._checks.get(what)
        if check is None or check.done():
            check = self._checks[what] = asyncio.ensure_future(start())
        return asyncio.shield(check)

    async def _within(self, what: str, check: Awaitable[bool]) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return await check
        except TimeoutError:
            log.warning("readiness: %s did not answer within %g s", what, self.timeout)
            return False


async def _works(check: Awaitable[None]) -> bool:
    try:
        await check
    except Unavailable:
        return False
    return True
