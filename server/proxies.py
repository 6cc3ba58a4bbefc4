"""Which address a request comes from when reverse proxies stand in between.

A proxy appends the address it received the request from to `X-Forwarded-For`; everything to the
left of that was written by whoever came before it, possibly the client itself. So forwarding
headers count only when the peer is a trusted proxy, and the client is the right-most entry that is
not a trusted proxy. `X-Real-Ip` is read only when a trusted peer sent no `X-Forwarded-For`: a proxy
that appends to one and passes the other through unchanged would otherwise let a client choose its
own address (and so escape a block or a per-address limit).
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Iterable

import tornado.web
from tornado import httputil

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = ("127.0.0.0/8", "::1/128")


def parse_networks(text: str | Iterable[str]) -> tuple[Network, ...]:
    """"10.0.0.1, 10.1.0.0/16, ::1" -> networks; ValueError names the entry that is not one."""
    entries = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network "
                             "(e.g. 10.0.0.5 or 10.0.0.0/8)") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: bare, `[v6]`, or with a port (`1.2.3.4:5678`, `[::1]:80`)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: Address | None) -> bool:
        return address is not None and any(
            address.version == n.version and address in n for n in self.networks)

    def client_address(self, peer: str, forwarded_for: list[str], real_ip: str | None = None) -> str:
        """The client's address: `peer` unless it is a trusted proxy, then walk `X-Forwarded-For`
        (every header line, joined) from the right past trusted proxies."""
        current = parse_address(peer)
        if current not in self:
            return peer
        entries = [e for line in forwarded_for for e in line.split(",")]
        if not entries and real_ip:
            entries = [real_ip]
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:  # not an address: stop at the last hop we can vouch for
                break
            current = address
            if current not in self:
                break
        return str(current)

    def protocol(self, peer: str, current: str, forwarded_proto: str | None) -> str:
        """`http` or `https` as the trusted proxy saw it (its own right-most entry)."""
        if not forwarded_proto or parse_address(peer) not in self:
            return current
        proto = forwarded_proto.split(",")[-1].strip().lower()
        return proto if proto in ("http", "https") else current


class ForwardedHeaders(httputil.HTTPMessageDelegate):
    """Sets the connection's remote_ip and protocol from forwarding headers for one request, and
    puts them back after it (the next request on a kept-alive connection starts afresh)."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, request_conn: httputil.HTTPConnection,
                 proxies: TrustedProxies) -> None:
        self.delegate = delegate
        self.context = getattr(request_conn, "context", None)
        self.proxies = proxies
        self._original: tuple[str, str] | None = None

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        context = self.context
        if context is not None and hasattr(context, "remote_ip"):
            peer, protocol = context.remote_ip, context.protocol
            self._original = (peer, protocol)
            context.remote_ip = self.proxies.client_address(
                peer, headers.get_list("X-Forwarded-For"), headers.get("X-Real-Ip"))
            context.protocol = self.proxies.protocol(peer, protocol, headers.get("X-Forwarded-Proto"))
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()
        self._restore()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
        self._restore()

    def _restore(self) -> None:
        if self._original is not None and self.context is not None:
            self.context.remote_ip, self.context.protocol = self._original
            self._original = None


class ProxyAwareApplication(tornado.web.Application):
    """An Application that reads forwarding headers from the peers in settings["trusted_proxies"],
    whichever HTTPServer hosts it (Tornado's own `xheaders` trusts every peer)."""

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = self.request_delegate(server_conn, request_conn)
        proxies = self.settings.get("trusted_proxies")
        return ForwardedHeaders(delegate, request_conn, proxies) if proxies else delegate

    def request_delegate(self, server_conn: object,
                         request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """The delegate that sees the request once forwarding headers have set its address."""
        return super().start_request(server_conn, request_conn)
