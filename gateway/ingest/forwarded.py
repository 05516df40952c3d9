"""The client's IP address and scheme behind trusted reverse proxies.

aiohttp ignores ``X-Forwarded-*`` on purpose: anyone can send them. They are believed here only
from a TCP peer inside ``TTGW_TRUSTED_PROXIES``, and ``X-Forwarded-For`` is walked from the right,
skipping trusted hops, to the first address a trusted proxy vouched for. The leftmost entries are
whatever the client wrote (nginx's ``$proxy_add_x_forwarded_for`` appends to them), so taking the
first entry, as many peers do, lets a visitor choose their own IP.

Pure functions: no I/O, no logging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from functools import lru_cache

from gateway.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_PORT_MAX = 65535
# Parsed addresses and trust decisions are kept for the most recent peers and hops: a request
# repeats its peer's (and a busy proxy's) decisions, and both answers are pure functions.
_CACHE_ENTRIES = 4096


@lru_cache(maxsize=_CACHE_ENTRIES)
def _parse_address(text: str) -> IPAddress | None:
    """An address from an XFF entry or a peer: ``ip``, ``ip:port`` or ``[ipv6]:port``.

    IPv4-mapped IPv6 becomes IPv4 and zone ids are dropped, so one host has one spelling.
    """
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not _is_port_suffix(rest)):
            return None
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        host, _, port = text.partition(":")
        if not _is_port_suffix(":" + port):
            return None
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _is_port_suffix(text: str) -> bool:
    port = text[1:]
    return (
        text.startswith(":")
        and 0 < len(port) <= len(str(_PORT_MAX))
        and port.isascii()
        and port.isdigit()
        and int(port) <= _PORT_MAX
    )


def _in_networks(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    if isinstance(trusted, tuple):  # the settings' tuple is hashable: decided once per address
        return _in_network_tuple(address, trusted)
    return _in_any(address, trusted)


@lru_cache(maxsize=_CACHE_ENTRIES)
def _in_network_tuple(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return _in_any(address, trusted)


def _in_any(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    # Membership across families is simply False, so mixed lists need no special case.
    return any(address in network for network in trusted)


def is_trusted(address: str | None, trusted: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` is an IP address inside one of the ``trusted`` networks."""
    if address is None:
        return False
    parsed = _parse_address(address)
    return parsed is not None and _in_networks(parsed, trusted)


def _entries_from_right(values: Sequence[str]) -> Iterator[str]:
    # Several headers count as one comma list in order (RFC 9110 field combination); empty
    # entries carry no hop and are skipped.
    for value in reversed(values):
        for entry in reversed(value.split(",")):
            entry = entry.strip()
            if entry:
                yield entry


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's IP address as the nearest trusted proxy saw it.

    ``peer`` is the TCP peer (``request.remote``); ``forwarded_for`` is every ``X-Forwarded-For``
    value in order (``request.headers.getall("X-Forwarded-For", [])``).

    * An untrusted (or non-IP) peer is the client; its ``X-Forwarded-For`` is ignored.
    * From a trusted peer, entries are walked from the right, skipping trusted ones; the first
      untrusted address is the client.
    * An entry that is not an address stops the walk: nothing to its left can be believed, so the
      last trusted hop seen (the peer, if it is the rightmost entry) is the answer.
    * When every entry is trusted, the leftmost one is the answer (the peer without XFF).

    Addresses come back normalized: IPv4-mapped IPv6 as IPv4, IPv6 compressed lowercase, no zone
    id, no port. A peer that is not an IP address comes back unchanged.
    """
    if isinstance(trusted, tuple):  # the settings' tuple: each (peer, header) decided once
        return _client_ip_of(peer, tuple(forwarded_for), trusted)
    return _client_ip(peer, forwarded_for, trusted)


@lru_cache(maxsize=_CACHE_ENTRIES)
def _client_ip_of(
    peer: str | None, forwarded_for: tuple[str, ...], trusted: tuple[IPNetwork, ...]
) -> str | None:
    return _client_ip(peer, forwarded_for, trusted)


def _client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> str | None:
    if peer is None:
        return None
    peer_address = _parse_address(peer)
    if peer_address is None:
        return peer
    if not _in_networks(peer_address, trusted):
        return str(peer_address)
    last_trusted = peer_address
    for entry in _entries_from_right(forwarded_for):
        address = _parse_address(entry)
        if address is None:
            break
        if not _in_networks(address, trusted):
            return str(address)
        last_trusted = address
    return str(last_trusted)


def forwarded_proto(
    peer: str | None,
    request_scheme: str,
    forwarded_proto_values: Sequence[str],
    trusted: Sequence[IPNetwork],
) -> str:
    """``"https"`` or ``"http"``: the scheme the client used.

    ``X-Forwarded-Proto`` is believed only from a trusted peer, and then only its rightmost value
    (the one the nearest proxy set) when it is ``http`` or ``https``. Otherwise the request's own
    scheme counts.
    """
    own = "https" if request_scheme.lower() == "https" else "http"
    if not is_trusted(peer, trusted):
        return own
    rightmost = next(_entries_from_right(forwarded_proto_values), None)
    if rightmost is None:
        return own
    claimed = rightmost.lower()
    return claimed if claimed in ("http", "https") else own
