"""Client addresses behind reverse proxies: forwarding headers count only from trusted peers."""

from __future__ import annotations

import pytest

from server.chat import Limits
from server.config import load_config
from server.proxies import TrustedProxies, parse_address, parse_networks
from server.ratelimit import Rate
from tests.harness import session, start_parley

PROXIES = TrustedProxies(parse_networks("10.0.0.0/8, 127.0.0.1, 2001:db8::/32"))


@pytest.mark.parametrize("peer, forwarded_for, real_ip, expected", [
    # An untrusted peer is the client, whatever it claims.
    ("198.51.100.7", ["1.2.3.4"], "5.6.7.8", "198.51.100.7"),
    # One trusted proxy: the address it appended.
    ("10.0.0.2", ["203.0.113.9"], None, "203.0.113.9"),
    # The client wrote its own entries before the proxy appended the real one.
    ("10.0.0.2", ["6.6.6.6, 7.7.7.7, 203.0.113.9"], None, "203.0.113.9"),
    # Two trusted hops: skip them both.
    ("127.0.0.1", ["6.6.6.6, 203.0.113.9, 10.1.2.3"], None, "203.0.113.9"),
    # Several header lines are one list.
    ("10.0.0.2", ["6.6.6.6", "203.0.113.9, 10.9.9.9"], None, "203.0.113.9"),
    # X-Real-Ip never overrides X-Forwarded-For.
    ("10.0.0.2", ["203.0.113.9"], "6.6.6.6", "203.0.113.9"),
    # ... but stands in for it when a trusted proxy sends only X-Real-Ip.
    ("10.0.0.2", [], "203.0.113.9", "203.0.113.9"),
    # Garbage stops the walk at the last hop we can vouch for.
    ("10.0.0.2", ["junk, 10.0.0.3"], None, "10.0.0.3"),
    ("10.0.0.2", [""], None, "10.0.0.2"),
    # Every hop trusted: the left-most of them.
    ("10.0.0.2", ["10.0.0.3"], None, "10.0.0.3"),
    # Ports and brackets as some proxies write them; IPv6 networks; v4-mapped peers.
    ("10.0.0.2", ["203.0.113.9:5123"], None, "203.0.113.9"),
    ("2001:db8::1", ["[2001:db9::5]:443"], None, "2001:db9::5"),
    ("::ffff:10.0.0.2", ["203.0.113.9"], None, "203.0.113.9"),
    # A peer that is not even an address (a Unix socket) is left alone.
    ("0.0.0.0", ["203.0.113.9"], None, "0.0.0.0"),
])
def test_client_address(peer, forwarded_for, real_ip, expected):
    assert PROXIES.client_address(peer, forwarded_for, real_ip) == expected


def test_protocol_comes_only_from_a_trusted_peer():
    assert PROXIES.protocol("10.0.0.2", "http", "https") == "https"
    assert PROXIES.protocol("10.0.0.2", "http", "http, https") == "https"
    assert PROXIES.protocol("10.0.0.2", "http", "gopher") == "http"
    assert PROXIES.protocol("198.51.100.7", "http", "https") == "http"


def test_nothing_is_trusted_by_default():
    assert PROXIES.client_address("127.0.0.2", ["1.2.3.4"]) == "127.0.0.2"
    assert TrustedProxies().client_address("127.0.0.1", ["1.2.3.4"]) == "127.0.0.1"
    assert not load_config({}, {}).proxy_networks


def test_configuration():
    config = load_config({}, {"PARLEY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert [str(n) for n in config.proxy_networks] == ["10.0.0.0/8", "192.0.2.1/32"]
    behind = load_config({"behind_proxy": True, "trusted_proxies": "10.0.0.5"}, {})
    assert [str(n) for n in behind.proxy_networks] == ["127.0.0.0/8", "::1/128", "10.0.0.5/32"]
    with pytest.raises(SystemExit, match="'proxy.example' is not an IP address"):
        load_config({"trusted_proxies": "proxy.example"}, {})


def test_parse_address():
    assert str(parse_address(" 192.0.2.1 ")) == "192.0.2.1"
    assert parse_address("unknown") is None
    assert parse_address("") is None


async def _email(parley, n: int, forwarded_for: str, real_ip: str) -> int:
    response = await parley.post("email", parley.ids(session(f"proxy{n}"), email=f"v{n}@example.com"),
                                 headers={"X-Forwarded-For": forwarded_for, "X-Real-Ip": real_ip})
    return response.status_code


async def test_a_rotating_header_escapes_neither_a_block_nor_the_address_limit(tmp_path):
    """Behind a proxy that appends the real address (203.0.113.9) and passes the rest through."""
    limits = Limits(writes_per_ip=Rate(burst=5, per_minute=1))
    async for parley in start_parley(tmp_path, limits=limits, behind_proxy=True):
        await parley.services.operators.block(parley.site, "ip", "203.0.113.9")
        blocked = [await _email(parley, n, f"198.51.100.{n}, 203.0.113.9", f"192.0.2.{n}")
                   for n in range(3)]
        assert blocked == [403] * 3
        # Another client behind the same proxy is not blocked, whatever its X-Real-Ip says...
        limited = [await _email(parley, n, f"198.51.100.{n}, 203.0.113.10", "203.0.113.9")
                   for n in range(12)]
        # ... and meets its own address's limit however it rotates its headers.
        assert limited == [200] * 5 + [429] * 7


async def test_headers_from_an_untrusted_peer_are_ignored(tmp_path):
    async for parley in start_parley(tmp_path, trusted_proxies="10.0.0.0/8"):
        await parley.services.operators.block(parley.site, "ip", "127.0.0.1")
        assert await _email(parley, 1, "203.0.113.9", "203.0.113.9") == 403
