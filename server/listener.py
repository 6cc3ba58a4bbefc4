"""Listening without falling over: the open-file limit, and accepting when descriptors run out.

Out of descriptors, Tornado's accept loop raises on every attempt: the listening socket stays
readable, so the loop spins at full CPU writing a traceback each turn (24 MB of them in 20 s) and
never serves again on its own. Here the acceptor stops listening for a moment instead, says so
once per interval, and picks the connections up again as soon as descriptors free up (idle ones
are closed by the header timeout).
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from typing import Any, Callable, Iterable

import tornado.httpserver
from tornado.ioloop import IOLoop

log = logging.getLogger(__name__)

# accept() failures that mean "no descriptors or memory for now", not a broken socket.
EXHAUSTED_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPTS_PER_TURN = 128  # as Tornado: bounded, so a flood of connections cannot starve the loop
ACCEPT_PAUSE_SECONDS = 0.1
EXHAUSTED_LOG_INTERVAL = 10.0


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (each connection costs one); log it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft, hard
        log.info("open-file limit raised from %d to %d (the hard limit)", soft, hard)
    else:
        log.info("open-file limit is %d", hard)
    return hard, hard


class Acceptor:
    """Accepts connections on one listening socket and hands each to `callback`."""

    def __init__(self, sock: socket.socket, callback: Callable[[socket.socket, Any], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.callback = callback
        self.clock = clock
        self.loop = IOLoop.current()
        self.listening = False
        self.stopped = False
        self.refused_since_log = 0
        self.last_log: float | None = None
        self._listen()

    def _listen(self) -> None:
        if not self.stopped and not self.listening:
            self.loop.add_handler(self.sock, self._accept, IOLoop.READ)
            self.listening = True

    def stop(self) -> None:
        self.stopped = True
        if self.listening:
            self.loop.remove_handler(self.sock)
            self.listening = False

    def _accept(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if not self.listening:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # closed while still in the queue
            except OSError as exc:
                if exc.errno not in EXHAUSTED_ERRNOS:
                    raise
                self._exhausted(exc)
                return
            self.callback(connection, address)

    def _exhausted(self, exc: OSError) -> None:
        """Stop listening for a moment (the queued connections wait in the kernel's backlog)."""
        self.refused_since_log += 1
        now = self.clock()
        if self.last_log is None or now - self.last_log >= EXHAUSTED_LOG_INTERVAL:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error("cannot accept connections: %s (open-file limit %d); pausing %.1f s at a "
                      "time, %d pause(s) since the last message", exc.strerror, soft,
                      ACCEPT_PAUSE_SECONDS, self.refused_since_log)
            self.last_log = now
            self.refused_since_log = 0
        self.loop.remove_handler(self.sock)
        self.listening = False
        self.loop.call_later(ACCEPT_PAUSE_SECONDS, self._listen)


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with the Acceptor above in place of its accept loop."""

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            # The same bookkeeping as TCPServer.add_sockets, so stop() works unchanged.
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = Acceptor(sock, self._handle_connection).stop
