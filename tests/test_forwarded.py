from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import IPNetwork
from gateway.ingest.forwarded import client_ip, forwarded_proto, is_trusted


def nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


LOOPBACK = nets("127.0.0.0/8", "::1/128")  # the TTGW_TRUSTED_PROXIES default
LOOPBACK_AND_PRIVATE = nets("127.0.0.0/8", "::1/128", "10.0.0.0/8")
CLIENT = "203.0.113.7"


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # An untrusted peer is the client, whatever it claims.
        ("198.51.100.9", ["6.6.6.6"], LOOPBACK, "198.51.100.9"),
        ("198.51.100.9", ["127.0.0.1"], LOOPBACK, "198.51.100.9"),
        ("198.51.100.9", [], LOOPBACK, "198.51.100.9"),
        # nginx on loopback, overwriting XFF with $remote_addr.
        ("127.0.0.1", [CLIENT], LOOPBACK, CLIENT),
        ("::1", [CLIENT], LOOPBACK, CLIENT),
        # nginx appending ($proxy_add_x_forwarded_for) to a client-supplied spoof.
        ("127.0.0.1", [f"6.6.6.6, {CLIENT}"], LOOPBACK, CLIENT),
        ("127.0.0.1", [f"127.0.0.1, {CLIENT}"], LOOPBACK, CLIENT),
        # Two trusted proxies: a load balancer at 10.0.0.5, then nginx on loopback.
        ("127.0.0.1", [f"{CLIENT}, 10.0.0.5"], LOOPBACK_AND_PRIVATE, CLIENT),
        ("127.0.0.1", [f"6.6.6.6, {CLIENT}, 10.0.0.5"], LOOPBACK_AND_PRIVATE, CLIENT),
        # ... but 10/8 is not trusted unless configured: the load balancer is then the client.
        ("127.0.0.1", [f"{CLIENT}, 10.0.0.5"], LOOPBACK, "10.0.0.5"),
        # Garbage stops the walk: nothing left of it is believed.
        ("127.0.0.1", [f"{CLIENT}, unknown, 10.0.0.5"], LOOPBACK_AND_PRIVATE, "10.0.0.5"),
        ("127.0.0.1", [f"{CLIENT}, _hidden"], LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", ["not an ip"], LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", [f"{CLIENT}, 1.2.3.4.5, 10.0.0.5"], LOOPBACK_AND_PRIVATE, "10.0.0.5"),
        ("127.0.0.1", [f"{CLIENT}, 10.0.0.5:99999"], LOOPBACK_AND_PRIVATE, "127.0.0.1"),
        # ... while garbage left of the first untrusted address does not matter.
        ("127.0.0.1", [f"garbage, {CLIENT}"], LOOPBACK, CLIENT),
        # Ports are accepted and dropped.
        ("127.0.0.1", [f"{CLIENT}:5678"], LOOPBACK, CLIENT),
        ("127.0.0.1", ["[2001:db8::1]:443"], LOOPBACK, "2001:db8::1"),
        ("127.0.0.1", ["[2001:db8::1]"], LOOPBACK, "2001:db8::1"),
        ("127.0.0.1", [f"{CLIENT}, 10.0.0.5:8080"], LOOPBACK_AND_PRIVATE, CLIENT),
        # IPv6: compressed lowercase, mapped IPv4 unwrapped, zone ids dropped.
        ("127.0.0.1", ["2001:DB8:0:0:0:0:0:1"], LOOPBACK, "2001:db8::1"),
        ("127.0.0.1", ["::ffff:203.0.113.7"], LOOPBACK, CLIENT),
        ("127.0.0.1", ["fe80::1%eth0"], LOOPBACK, "fe80::1"),
        ("::ffff:127.0.0.1", [CLIENT], LOOPBACK, CLIENT),  # a mapped loopback peer is trusted
        ("::ffff:198.51.100.9", [CLIENT], LOOPBACK, "198.51.100.9"),
        ("2001:DB8::0001", ["6.6.6.6"], LOOPBACK, "2001:db8::1"),
        # Several X-Forwarded-For headers are one list, in order.
        ("127.0.0.1", ["6.6.6.6", CLIENT], LOOPBACK, CLIENT),
        ("127.0.0.1", [CLIENT, "10.0.0.5"], LOOPBACK_AND_PRIVATE, CLIENT),
        ("127.0.0.1", [f"{CLIENT}, ", "", " , 10.0.0.5"], LOOPBACK_AND_PRIVATE, CLIENT),
        # Every hop trusted: the leftmost one.
        ("127.0.0.1", ["10.0.0.9, 10.0.0.5"], LOOPBACK_AND_PRIVATE, "10.0.0.9"),
        ("127.0.0.1", [], LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", ["", " "], LOOPBACK, "127.0.0.1"),
        # No trusted proxies: always the peer.
        ("127.0.0.1", [CLIENT], (), "127.0.0.1"),
        ("10.0.0.5", [CLIENT], (), "10.0.0.5"),
        # No peer, or a peer that is not an address (a unix socket): no XFF either.
        (None, [CLIENT], LOOPBACK, None),
        ("", [CLIENT], LOOPBACK, ""),
    ],
)
def test_client_ip(
    peer: str | None, xff: list[str], trusted: tuple[IPNetwork, ...], expected: str | None
) -> None:
    assert client_ip(peer, xff, trusted) == expected


def test_mixed_family_networks_do_not_match_across_families() -> None:
    only_v6 = nets("::/0")
    assert client_ip("127.0.0.1", [CLIENT], only_v6) == "127.0.0.1"
    assert client_ip("::1", ["2001:db8::7"], only_v6) == "2001:db8::7"


def test_is_trusted() -> None:
    assert is_trusted("127.0.0.1", LOOPBACK)
    assert is_trusted("127.8.9.10", LOOPBACK)
    assert is_trusted("::1", LOOPBACK)
    assert is_trusted("::ffff:127.0.0.1", LOOPBACK)
    assert not is_trusted("198.51.100.9", LOOPBACK)
    assert not is_trusted("127.0.0.1", ())
    assert not is_trusted(None, LOOPBACK)
    assert not is_trusted("", LOOPBACK)
    assert not is_trusted("localhost", LOOPBACK)
    assert not is_trusted("127.0.0.1.example", LOOPBACK)


@pytest.mark.parametrize(
    ("peer", "scheme", "values", "expected"),
    [
        ("127.0.0.1", "http", ["https"], "https"),
        ("127.0.0.1", "http", ["HTTPS"], "https"),
        ("127.0.0.1", "https", ["http"], "http"),
        ("127.0.0.1", "http", ["http, https"], "https"),  # rightmost: the nearest proxy's view
        ("127.0.0.1", "http", ["https", "http"], "http"),
        ("127.0.0.1", "http", [" https "], "https"),
        ("127.0.0.1", "https", ["ftp"], "https"),  # unknown value: the request's own scheme
        ("127.0.0.1", "http", ["https, wss"], "http"),
        ("127.0.0.1", "http", [], "http"),
        ("127.0.0.1", "HTTPS", [], "https"),
        ("198.51.100.9", "http", ["https"], "http"),  # untrusted peer: not believed
        ("198.51.100.9", "https", ["http"], "https"),
        (None, "http", ["https"], "http"),
        ("", "http", ["https"], "http"),
    ],
)
def test_forwarded_proto(peer: str | None, scheme: str, values: list[str], expected: str) -> None:
    assert forwarded_proto(peer, scheme, values, LOOPBACK) == expected


def test_forwarded_proto_with_no_trusted_proxies() -> None:
    assert forwarded_proto("127.0.0.1", "http", ["https"], ()) == "http"


ip_text = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"{a}:{8080}"),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
    st.text(max_size=40),
)
trusted_networks = st.lists(
    st.sampled_from(
        [*LOOPBACK_AND_PRIVATE, *nets("0.0.0.0/0", "::/0", "::ffff:0:0/96", "203.0.113.0/24")]
    ),
    max_size=4,
)


@given(
    st.one_of(st.none(), ip_text),
    st.lists(st.one_of(st.text(), st.lists(ip_text).map(", ".join)), max_size=4),
    trusted_networks,
)
def test_client_ip_never_raises(peer: str | None, xff: list[str], trusted: list[IPNetwork]) -> None:
    result = client_ip(peer, xff, trusted)
    assert (result is None) == (peer is None)
    forwarded_proto(peer, "http", xff, trusted)


@given(
    st.ip_addresses(),
    st.lists(st.one_of(st.text(), st.lists(ip_text).map(", ".join)), max_size=4),
    trusted_networks,
)
def test_an_untrusted_peer_is_always_the_client(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    xff: list[str],
    trusted: list[IPNetwork],
) -> None:
    normalized = peer.ipv4_mapped if isinstance(peer, ipaddress.IPv6Address) else None
    address = normalized or peer
    if any(address in network for network in trusted):
        return
    assert client_ip(str(peer), xff, trusted) == str(address)
    assert forwarded_proto(str(peer), "http", ["https"], trusted) == "http"


@given(st.lists(st.ip_addresses(), min_size=1, max_size=6))
def test_a_fully_trusted_chain_answers_its_leftmost_hop(
    hops: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    everything = nets("0.0.0.0/0", "::/0")
    expected = hops[0].ipv4_mapped if isinstance(hops[0], ipaddress.IPv6Address) else None
    assert client_ip("127.0.0.1", [", ".join(map(str, hops))], everything) == str(
        expected or hops[0]
    )
