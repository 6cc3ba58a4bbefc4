"""The connections to OpenAI-compatible upstreams: httpx's client on a transport of our own.

httpx, httpcore (HTTP/1.1 through h11, TLS, timeouts) and httpx-sse still do the work; two parts
of httpx's default transport are replaced because, measured with many answers streaming, they
cost more than the rest of the answer:

- **The pool** (`UpstreamTransport`). httpcore 1.0.9's pool compares `max_keepalive_connections`
  with the number of *all* its connections (encode/httpcore#1000), so once more answers stream at
  once than it may keep idle, every connection that goes idle is closed: each question then paid
  a new TCP (and TLS) connection. It also walks every connection (and asks each idle one's socket
  whether it is readable) whenever a request starts or ends. Ours keeps up to `max_idle`
  connections, most recently used first, and never looks at the ones in use: O(idle) per request.
- **The socket** (`AsyncioBackend`, an httpcore network backend). anyio's socket stream stops the
  socket's reading after every receive and starts it again for the next (an `epoll_ctl` each way
  per chunk), and runs a cancel scope per read for the read timeout. Ours is an asyncio protocol
  that reads as data comes (stopping only while more than `READ_BUFFER_HIGH` bytes wait unread),
  with one re-armed timer per connection for the read timeout.

Proxies named in the environment (HTTPS_PROXY and the like) are httpx's own business: when any
is set the registry uses httpx's default transport instead (server/ai/providers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, AsyncIterator, Iterable, Iterator

import httpcore
import httpx

# Unread bytes past which reading stops until the reader catches up (a model's answer is read
# as it comes; only a stalled consumer gets here).
READ_BUFFER_HIGH = 256 * 1024
READ_BUFFER_LOW = 64 * 1024

# httpcore's errors as httpx's, most specific first (what httpx's own transport does).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _Reader(asyncio.Protocol):
    """Keeps what the socket delivers until `_Socket.read` takes it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False  # EOF or the connection lost: nothing more will come
        self.error: Exception | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None  # a read waiting for data
        self.drained: asyncio.Future[None] | None = None  # a write waiting for the buffer to empty
        # The read timeout: one timer, re-armed when it fires before the latest read's deadline.
        self.read_due = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()
        if len(self.buffer) > READ_BUFFER_HIGH and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        self.resume_writing()
        self.cancel_timer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm_timer(self, timeout: float) -> None:
        self.read_due = self.loop.time() + timeout
        if self.timer is None or self.timer.when() > self.read_due:
            self.cancel_timer()
            self.timer = self.loop.call_at(self.read_due, self._timer_fired)

    def _timer_fired(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next read arms it again
        if self.loop.time() < self.read_due:
            self.timer = self.loop.call_at(self.read_due, self._timer_fired)
            return
        self.waiter = None
        waiter.set_exception(httpcore.ReadTimeout("no data from the upstream within the read timeout"))

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Socket(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, reader: _Reader) -> None:
        self._transport = transport
        self._reader = reader

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        reader = self._reader
        if not reader.buffer:
            if not reader.closed:
                reader.waiter = waiter = reader.loop.create_future()
                if timeout is not None:
                    reader.arm_timer(timeout)
                await waiter
            if not reader.buffer:
                if reader.error is not None:
                    raise httpcore.ReadError(str(reader.error) or type(reader.error).__name__)
                return b""  # EOF
        buffer = reader.buffer
        if len(buffer) <= max_bytes:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        if reader.reading_paused and len(buffer) < READ_BUFFER_LOW:
            reader.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        reader = self._reader
        if reader.closed or self._transport.is_closing():
            raise httpcore.WriteError("the upstream connection is closed")
        self._transport.write(buffer)
        if reader.writing_paused:
            reader.drained = reader.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await reader.drained
            except TimeoutError:
                raise httpcore.WriteTimeout("the upstream did not read the request in time") from None
            if reader.closed:
                raise httpcore.WriteError("the upstream connection closed")

    async def aclose(self) -> None:
        self._reader.cancel_timer()
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        reader = self._reader
        try:
            async with asyncio.timeout(timeout):
                transport = await reader.loop.start_tls(
                    self._transport, reader, ssl_context, server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout)
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("the TLS handshake with the upstream timed out") from None
        except (OSError, ssl.SSLError) as exc:  # certificate errors are both
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:
            raise httpcore.ConnectError("the upstream connection closed during the TLS handshake")
        reader.transport = transport  # type: ignore[assignment]
        return _Socket(transport, reader)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of idle connections: did the upstream close (or talk)?
            return self._reader.closed or bool(self._reader.buffer)
        names = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername",
                 "socket": "socket"}
        return self._transport.get_extra_info(names[info]) if info in names else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network I/O on asyncio's own transports (see the module's docstring)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, reader = await loop.create_connection(
                    _Reader, host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Socket(transport, reader)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, reader = await loop.create_unix_connection(_Reader, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {path} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _Socket(transport, reader)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    """A response's body; closing it hands its connection back to the transport."""

    def __init__(self, stream: Any, transport: UpstreamTransport,
                 connection: httpcore.AsyncHTTPConnection) -> None:
        self._stream = stream
        self._transport = transport
        self._connection: httpcore.AsyncHTTPConnection | None = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            with _as_httpx_errors():
                await self._stream.aclose()  # idle again if the response was read to its end
        finally:
            await self._transport.release(connection)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to any number of upstreams, keeping up to `max_idle` connections for reuse."""

    def __init__(self, *, max_idle: int, keepalive_expiry: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None,
                 network_backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        self._backend = network_backend or AsyncioBackend()
        self._idle: list[httpcore.AsyncHTTPConnection] = []  # most recently used last
        self.connections_made = 0

    def _take(self, origin: httpcore.Origin) -> tuple[httpcore.AsyncHTTPConnection | None,
                                                     list[httpcore.AsyncHTTPConnection]]:
        """An idle connection to `origin` that is still good, and the stale ones to close."""
        stale = []
        for index in range(len(self._idle) - 1, -1, -1):
            connection = self._idle[index]
            if connection.has_expired() or connection.is_closed():
                stale.append(self._idle.pop(index))
            elif connection.can_handle_request(origin) and connection.is_available():
                return self._idle.pop(index), stale
        return None, stale

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                             target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        origin = core_request.url.origin
        connection, stale = self._take(origin)
        for old in stale:
            await old.aclose()
        if connection is None:
            connection = httpcore.AsyncHTTPConnection(
                origin, ssl_context=self._ssl_context, keepalive_expiry=self.keepalive_expiry,
                network_backend=self._backend)
            self.connections_made += 1
        try:
            with _as_httpx_errors():
                response = await connection.handle_async_request(core_request)
        except BaseException:
            await connection.aclose()
            raise
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(response.stream, self, connection),
                              extensions=response.extensions)

    async def release(self, connection: httpcore.AsyncHTTPConnection) -> None:
        if not connection.is_idle() or connection.has_expired():
            await connection.aclose()
            return
        self._idle.append(connection)
        if len(self._idle) > self.max_idle:
            await self._idle.pop(0).aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()
