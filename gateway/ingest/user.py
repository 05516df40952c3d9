"""Who the event is about, as the client says it: identifiers, the click, the cookie, the address.

:func:`parse_user` reads ``user`` (with Segment's ``traits``, ``context.traits`` and ``context``
as fallbacks) into a :class:`UserInput`. The values stay raw: the ingest handler hashes e-mail
addresses and phone numbers (``gateway.identity``) before anything is written anywhere. A value
that cannot be used is dropped with a warning and the event kept: a blank identifier is no
identifier, a placeholder ``ttclid`` is no click, and a private or loopback address is never the
buyer's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.identity.cookies import strip_pixel_click_suffix, ttclid_problem, ttp_problem
from gateway.ingest.fields import FieldWarning, parse_object, parse_optional_text, parse_text, soft


@dataclass(slots=True)
class UserInput:
    """What the client says about the person; raw values, hashed by the ingest handler."""

    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    external_ids: list[str] = field(default_factory=list)
    ttclid: str | None = None
    ttp: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    locale: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    zip_code: str | None = None
    city: str | None = None
    state: str | None = None


_CONTEXT_KEYS = frozenset({"userAgent", "locale", "ip"})  # what parse_user reads of ``context``
Places = list[tuple[str, Mapping[str, Any]]]  # (where, object) in the order they are read


def _trait_places(traits: Any, context: Mapping[str, Any], notes: list[FieldWarning]) -> Places:
    """Segment's traits, where identifiers are read after ``user``: the message's own (an
    identify's) over ``context.traits`` (a track's), each followed by its ``address``."""
    places: Places = []
    for where, raw in (("traits", traits), ("context.traits", context.get("traits"))):
        obj = soft(notes, partial(parse_object, raw, where)) or {}
        if obj:
            places.append((where, obj))
            address = soft(notes, partial(parse_object, obj.get("address"), f"{where}.address"))
            if address:
                places.append((f"{where}.address", address))
    return places


def _given(
    user: Mapping[str, Any], keys: tuple[str, ...], places: Places, trait_keys: tuple[str, ...]
) -> tuple[Any, str]:
    """The value of the first of ``user``'s ``keys`` present (blank included: it is said), else
    of the traits' ``trait_keys``; with where it was read."""
    for key in keys:
        if key in user:
            return user[key], f"user.{key}"
    for where, obj in places:
        for key in trait_keys:
            if key in obj:
                return obj[key], f"{where}.{key}"
    return None, f"user.{keys[0]}"


def parse_user(
    raw: Any, context: Mapping[str, Any], traits: Any, notes: list[FieldWarning]
) -> UserInput:
    """The event's ``user``, with Segment's traits (``traits``, then ``context.traits``, each with
    its ``address``) and ``context`` filling what it leaves out; each value that cannot be used is
    dropped with a warning in ``notes``."""
    user = parse_object(raw, "user")
    places = _trait_places(traits, context, notes)
    if not user and not places and _CONTEXT_KEYS.isdisjoint(context):
        return UserInput()  # nothing said about the person (most collector events)

    def text(obj: Mapping[str, Any], key: str, where: str, limit: int) -> str | None:
        return soft(notes, lambda: parse_optional_text(obj, key, where, limit=limit))

    def person(keys: tuple[str, ...], trait_keys: tuple[str, ...], limit: int = 200) -> str | None:
        """The first of ``user``'s ``keys`` given, else of the traits' ``trait_keys``."""
        for key in keys:
            if user.get(key) not in (None, ""):
                return text(user, key, f"user.{key}", limit)
        for where, obj in places:
            for key in trait_keys:
                if obj.get(key) not in (None, ""):
                    return text(obj, key, f"{where}.{key}", limit)
        return None

    email, email_at = _given(user, ("email",), places, ("email",))
    phone, phone_at = _given(user, ("phone", "phone_number"), places, ("phone",))
    user_input = UserInput(
        emails=_strings(email, email_at, notes),
        phones=_strings(phone, phone_at, notes, numbers=True),
        external_ids=_strings(user.get("external_id"), "user.external_id", notes, numbers=True),
        ttclid=_click_id(text(user, "ttclid", "user.ttclid", 1024), notes),
        ttp=_ttp(text(user, "ttp", "user.ttp", 128), notes),
        user_agent=text(user, "user_agent", "user.user_agent", 1024)
        or text(context, "userAgent", "context.userAgent", 1024),
        country=person(("country",), ("country",), 64),
        locale=text(user, "locale", "user.locale", 35)
        or text(context, "locale", "context.locale", 35),
        first_name=person(("first_name",), ("firstName", "first_name")),
        last_name=person(("last_name",), ("lastName", "last_name")),
        zip_code=person(("zip_code",), ("postalCode", "postal_code", "zip", "zipcode"), 32),
        city=person(("city",), ("city",)),
        state=person(("state",), ("state",)),
    )
    for source, key, where in ((user, "ip", "user.ip"), (context, "ip", "context.ip")):
        ip = text(source, key, where, 64)
        if ip is not None:
            user_input.ip = _buyer_ip(ip, where, notes)
            if user_input.ip is not None:
                break
    return user_input


def _strings(
    value: Any, name: str, notes: list[FieldWarning], *, numbers: bool = False
) -> list[str]:
    """Identifiers given as one value or a list: each usable one kept (with ``numbers``, a
    number as its decimal string), each blank or unusable one dropped with a warning."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]" if isinstance(value, list) else name
        if i >= 10:
            notes.append(FieldWarning.of(name, f"at most 10 values; {len(items) - 10} dropped"))
            break
        if numbers and isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        text = soft(notes, partial(parse_text, item, where, limit=320))
        if text is not None:
            out.append(text)
    return out


def _click_id(value: str | None, notes: list[FieldWarning]) -> str | None:
    """A ``user.ttclid`` that can be a click id; a placeholder is no click (and said)."""
    if value is None:
        return None
    value = strip_pixel_click_suffix(value)
    problem = ttclid_problem(value)
    if problem is not None:
        notes.append(FieldWarning.of("user.ttclid", f"{problem}; ignored (no click)"))
        return None
    return value


def _ttp(value: str | None, notes: list[FieldWarning]) -> str | None:
    if value is None:
        return None
    problem = ttp_problem(value)
    if problem is not None:
        notes.append(FieldWarning.of("user.ttp", f"{problem}; ignored"))
        return None
    return value


_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def not_the_buyers(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address no shopper on the internet has: loopback, link-local, unspecified,
    multicast, private (RFC 1918, unique-local) or carrier-grade NAT space. Documentation ranges
    (203.0.113.0/24…) pass: examples and tests use them."""
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return True
    if address.is_multicast:
        return True
    return any(address in network for network in _INTERNAL_NETWORKS)


def _buyer_ip(text: str, where: str, notes: list[FieldWarning]) -> str | None:
    """The buyer's address as TikTok wants it: IPv4-mapped IPv6 (``::ffff:203.0.113.9``, Node's
    default) unwrapped; private, loopback and other non-public addresses dropped with a warning
    (they are the backend's or a proxy's, never a shopper's on the internet)."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        notes.append(FieldWarning.of(where, "is not an IPv4 or IPv6 address; dropped"))
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not_the_buyers(address):
        notes.append(
            FieldWarning.of(
                where,
                f"{address} is a private, loopback or reserved address, not the buyer's public "
                "one (the stitched session's address is used if known); dropped",
            )
        )
        return None
    return str(address)
