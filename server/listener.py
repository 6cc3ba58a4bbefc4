"""Listening without falling over: the open-file limit, accepting when descriptors run out, and a
cap on the connections one address holds open.

Out of descriptors, Tornado's accept loop raises on every attempt: the listening socket stays
readable, so the loop spins at full CPU writing a traceback each turn (24 MB of them in 20 s) and
never serves again on its own. Here the acceptor stops listening for a moment instead, says so
once per interval, and picks the connections up again as soon as descriptors free up (idle ones
are closed by the header timeout).

One address may hold at most `max_connections_per_address` connections open (trusted proxies
excepted: everyone behind them shares their address). Past that, a connection is answered at
accept time with a fixed 429, before Tornado parses anything or a handler runs, and closed gently:
the answer, then the end of our side, then what the client still sends is read and dropped for a
moment so that it reads the answer rather than a reset.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import resource
import socket
import time
from typing import Any, Callable, Iterable

import tornado.httpserver
from tornado import iostream
from tornado.ioloop import IOLoop

from server.admission import RETRY_AFTER_SECONDS, RefusalLog
from server.proxies import TrustedProxies, parse_address

log = logging.getLogger(__name__)

# accept() failures that mean "no descriptors or memory for now", not a broken socket.
EXHAUSTED_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPTS_PER_TURN = 128  # as Tornado: bounded, so a flood of connections cannot starve the loop
ACCEPT_PAUSE_SECONDS = 0.1
EXHAUSTED_LOG_INTERVAL = 10.0
# A refused connection is closed after its client stops sending, or after this long or this much.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
MAX_LINGERING = 512  # past this many at once, refused connections are closed straight away


def _refusal_bytes() -> bytes:
    body = json.dumps({"success": False, "code": "rate_limited",
                       "error": "Too many connections from this address."}).encode()
    head = ("HTTP/1.1 429 Too Many Requests\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n"
            "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


REFUSAL = _refusal_bytes()


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
                 admit: Callable[[socket.socket, Any], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.callback = callback
        self.admit = admit  # False: it has dealt with the connection itself
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
            if self.admit is None or self.admit(connection, address):
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


def whole_request_without_body(data: bytes) -> bool:
    """Whether `data` is a whole request head that announces no body (a GET, usually): once it is
    read, closing sends the client a plain end of stream, not a reset."""
    head, end, rest = data.partition(b"\r\n\r\n")
    if not end or rest:
        return False
    head = head.lower()
    return b"content-length:" not in head and b"transfer-encoding:" not in head


class Refuser:
    """Answers a connection with the fixed 429 and closes it gently (see the module's docstring)."""

    def __init__(self) -> None:
        self.loop = IOLoop.current()
        self.lingering: dict[int, tuple[socket.socket, object, list[int]]] = {}

    def refuse(self, connection: socket.socket) -> None:
        try:
            connection.setblocking(False)
            connection.send(REFUSAL)  # a few hundred bytes into an empty send buffer
            try:
                arrived = connection.recv(LINGER_BYTES)
            except BlockingIOError:
                arrived = b""
            if whole_request_without_body(arrived) or len(self.lingering) >= MAX_LINGERING:
                connection.close()  # nothing more is coming (or no room to wait for it)
                return
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            connection.close()
            return
        fd = connection.fileno()
        timer = self.loop.call_later(LINGER_SECONDS, self._close, fd)
        self.lingering[fd] = (connection, timer, [0])
        self.loop.add_handler(fd, self._readable, IOLoop.READ | IOLoop.ERROR)

    def _readable(self, fd: int, events: int) -> None:
        connection, _, received = self.lingering[fd]
        try:
            data = connection.recv(LINGER_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        received[0] += len(data)
        if not data or received[0] >= LINGER_BYTES:
            self._close(fd)

    def _close(self, fd: int) -> None:
        entry = self.lingering.pop(fd, None)
        if entry is not None:
            connection, timer, _ = entry
            self.loop.remove_handler(fd)
            self.loop.remove_timeout(timer)  # type: ignore[arg-type]
            connection.close()


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with the Acceptor above in place of its accept loop, and a cap on the
    connections one address holds open (0: none; trusted proxies are never capped)."""

    def initialize(self, *args: Any, connections_per_address: int = 0,
                   uncapped: TrustedProxies | None = None, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.connections_per_address = connections_per_address
        self.uncapped = uncapped or TrustedProxies()
        self._open_by_address: collections.Counter[str] = collections.Counter()
        self._refuser: Refuser | None = None
        self.refusals = RefusalLog("connections over the per-address cap "
                                   f"({connections_per_address}, --max-connections-per-address)")

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            # The same bookkeeping as TCPServer.add_sockets, so stop() works unchanged.
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = Acceptor(sock, self._handle_connection,
                                                     admit=self._admit).stop

    def open_from(self, address: str) -> int:
        return self._open_by_address[address]

    def _admit(self, connection: socket.socket, address: Any) -> bool:
        if not self.connections_per_address or not isinstance(address, tuple):
            return True
        ip = address[0]
        if self._open_by_address[ip] < self.connections_per_address or (
                self.uncapped and parse_address(ip) in self.uncapped):
            return True
        if self._refuser is None:
            self._refuser = Refuser()
        self._refuser.refuse(connection)
        self.refusals.refused(ip)
        return False

    def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        if isinstance(address, tuple):
            self._open_by_address[address[0]] += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        address = getattr(getattr(server_conn, "context", None), "address", None)
        if isinstance(address, tuple):
            ip = address[0]
            self._open_by_address[ip] -= 1
            if self._open_by_address[ip] <= 0:
                del self._open_by_address[ip]
        super().on_close(server_conn)
