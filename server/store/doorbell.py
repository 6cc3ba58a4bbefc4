"""Processes sharing one SQLite file ring each other when they record events, so that a visitor
held by one process hears an operator's reply written by another within milliseconds, not at the
events feed's next poll.

SQLite cannot tell a connection that another one wrote. Here every process that listens for other
processes' events (its PollingFeed runs) binds a Unix datagram socket in Linux's abstract namespace
under a random name, and leaves an empty file of that name in a directory beside the database
(owner-only). A process that commits a write with events sends each name in the directory one
byte, from the writer thread, without waiting: a full queue means that process is rung already.
A ring only says "read the events table now"; the feed's poll stays as the safety net, so a lost
ring (a process that started a moment ago, a platform without abstract sockets) costs the poll's
delay and nothing else.

Abstract names have no path-length limit and vanish with their process; a name whose process died
without removing its file refuses the ring, and the ringer removes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = b"\0parley-doorbell-"
NAMES_FRESH_SECONDS = 1.0  # how long a ringer trusts its listing of the directory
MAX_PEERS = 256  # names rung per write, at most (a directory filling up must not stall the writer)
DRAIN_PER_WAKE = 1024  # rings read per wake-up, at most


def _address(name: str) -> bytes:
    return PREFIX + name.encode()


class Doorbell:
    """One process's end: `ring()` from the writer thread after a commit, `wait()` on the loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = uuid.uuid4().hex
        self._peers: list[str] = []
        self._peers_read_at: float | None = None
        self._sender: socket.socket | None = None
        self._lock = threading.Lock()  # the sender and the listing, for ringers on other threads
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rung = asyncio.Event()
        self._unavailable = False

    # -- ringing (any thread) ---------------------------------------------------------------------
    def ring(self) -> int:
        """Tell every other listening process that events were recorded; returns how many were
        rung. Never blocks and never raises: a ring that cannot go costs the other side a poll."""
        with self._lock:
            try:
                if self._sender is None:
                    self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sender.setblocking(False)
                rung = 0
                for name in self._names():
                    if name != self.name and self._send(name):
                        rung += 1
                return rung
            except OSError as exc:
                log.debug("could not ring the other processes: %s", exc)
                return 0

    def _names(self) -> list[str]:
        now = time.monotonic()
        if self._peers_read_at is None or now - self._peers_read_at >= NAMES_FRESH_SECONDS:
            self._peers_read_at = now
            try:
                with os.scandir(self.directory) as entries:
                    self._peers = [entry.name for _, entry in zip(range(MAX_PEERS), entries)]
            except FileNotFoundError:
                self._peers = []
        return self._peers

    def _send(self, name: str) -> bool:
        assert self._sender is not None
        try:
            self._sender.sendto(b"!", _address(name))
        except BlockingIOError:
            return True  # its queue is full: it has rings to read already
        except ConnectionRefusedError:  # nobody has that name: its process ended without tidying
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
            self._peers_read_at = None
            return False
        except OSError as exc:  # this name alone (say, not one of ours): ring the others still
            log.debug("could not ring %r: %s", name[:64], exc)
            return False
        return True

    # -- listening (the event loop) ---------------------------------------------------------------
    async def wait(self, timeout: float) -> bool:
        """Until another process rings or `timeout` passes; True when rung. The first call starts
        listening; where that cannot be done, this only sleeps."""
        if self._listener is None and not self._unavailable:
            self._listen()
        if not self._rung.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._rung.wait()
        rung = self._rung.is_set()
        self._rung.clear()
        return rung

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            listener.setblocking(False)
            listener.bind(_address(self.name))
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.directory / self.name).touch(mode=0o600)
        except OSError as exc:
            listener.close()
            self._unavailable = True
            log.info("other processes' events will be read at each poll, without rings: %s", exc)
            return
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._listener is not None
        for _ in range(DRAIN_PER_WAKE):
            try:
                self._listener.recv(16)
            except OSError:  # BlockingIOError: all read
                break
        self._rung.set()

    def close(self) -> None:
        """Stop listening and take this process's name out of the directory."""
        listener, self._listener = self._listener, None
        if listener is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(listener.fileno())
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / self.name).unlink()
        with self._lock:
            sender, self._sender = self._sender, None
            if sender is not None:
                sender.close()
