"""From a validated envelope to the TikTok event that is queued: hashing, enrichment, consent.

Raw e-mail and phone numbers stop here: :func:`hash_user` turns them into SHA-256 hashes, and only
those are linked to visitors, queued, or written to a receipt. IP and user agent are the buyer's:
the browser request's own (through trusted proxies) for ``/e``; for ``/v1/track`` the ones the
backend passes in ``user.ip``/``user.user_agent``, else those of the buyer's stitched session —
never the backend's own. The click is the one the event names, else the one in its page URL (or a
same-host referrer: on every path, through the same junk checks), else the visitor's. The page
is the one the event names, else the buyer's last: none is made up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from gateway.identity import normalize
from gateway.identity.consent import ConsentDecision
from gateway.identity.cookies import read_ttclid, strip_pixel_click_suffix
from gateway.identity.visitors import Click, Session
from gateway.ingest.envelope import Envelope
from gateway.ingest.fields import FieldWarning
from gateway.operate.metrics import IDENTIFIERS_DROPPED

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


@dataclass(frozen=True, slots=True)
class HashedUser:
    """An envelope's identifiers after normalization and hashing."""

    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    external_ids: tuple[str, ...] = ()  # given external ids and the user_id, hashed
    first_name: str | None = None
    last_name: str | None = None
    zip_code: str | None = None
    user_id_hash: str | None = None
    warnings: tuple[FieldWarning, ...] = ()  # identifiers that could not be used

    def links(self) -> list[tuple[str, str]]:
        """The (kind, hash) pairs that identify a person across visitors."""
        links = [("user_id", self.user_id_hash)] if self.user_id_hash else []
        links += [("email", e) for e in self.emails] + [("phone", p) for p in self.phones]
        return links


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a batch came from, and what the request itself tells about the buyer."""

    source: str  # "browser" or "server"
    host: str  # the gateway's own: never sent as the buyer's page
    ip: str | None = None
    user_agent: str | None = None
    ttp: str | None = None
    click: Click | None = None  # from the signed click cookie (browser)


def _hashed_all(
    values: list[str], hasher: Any, kind: str, why: str, notes: list[FieldWarning]
) -> tuple[str, ...]:
    out: list[str] = []
    for i, value in enumerate(values):
        digest = hasher(value)
        if digest is None:
            IDENTIFIERS_DROPPED.labels(kind).inc()
            where = f"user.{kind}" if len(values) == 1 else f"user.{kind}[{i}]"
            notes.append(FieldWarning.of(where, f"{why}; dropped", label=f"user.{kind}"))
        elif digest not in out:
            out.append(digest)
    return tuple(out)


def hash_user(envelope: Envelope, default_region: str | None) -> HashedUser:
    """Normalize and hash every identifier of ``envelope``; invalid ones are dropped, counted
    and said (``warnings``): never hashed as they are, never stored raw."""
    user = envelope.user
    region = normalize.normalize_region(user.country) or default_region
    notes: list[FieldWarning] = []
    user_id_hash = normalize.hash_external_id(envelope.user_id) if envelope.user_id else None
    external = list(
        _hashed_all(user.external_ids, normalize.hash_external_id, "external_id", "is empty", notes)
    )
    if user_id_hash and user_id_hash not in external:
        external.insert(0, user_id_hash)
    phone_why = (
        "is not a valid phone number"
        if region
        else "is not a valid phone number in international form (+ and country code); set the "
        "event's user.country, TTGW_DEFAULT_PHONE_REGION or the integration's default_phone_region "
        "to read national numbers"
    )
    return HashedUser(
        emails=_hashed_all(
            user.emails, normalize.hash_email, "email", "is not an e-mail address", notes
        ),
        phones=_hashed_all(
            user.phones, lambda raw: normalize.hash_phone(raw, region), "phone", phone_why, notes
        ),
        external_ids=tuple(external),
        warnings=tuple(notes),
        first_name=normalize.hash_name(user.first_name) if user.first_name else None,
        last_name=normalize.hash_name(user.last_name) if user.last_name else None,
        zip_code=normalize.hash_zip(user.zip_code) if user.zip_code else None,
        user_id_hash=user_id_hash,
    )


def click_from_page(url: str | None, referrer: str | None, now_ms: int) -> Click | None:
    """A click from a page URL's ``ttclid``, else from a same-host referrer's."""
    for candidate, same_host_only in ((url, False), (referrer, True)):
        # no "ttclid" in it, even percent-encoded: no click (most pages; parsing costs µs)
        if not candidate or ("ttclid" not in candidate and "%" not in candidate):
            continue
        try:
            parts = urlsplit(candidate)
            if same_host_only and (not url or parts.hostname != urlsplit(url).hostname):
                continue
        except ValueError:  # a referrer is any text the browser gives: no click in it
            continue
        click = click_from_query(
            parts.query, candidate, referrer if candidate is url else None, now_ms
        )
        if click is not None:
            return click
    return None


def click_from_query(
    query_string: str, landing_url: str, referrer: str | None, now_ms: int
) -> Click | None:
    """The click of a landing URL's query (its ``ttclid`` and UTM fields), if it has one."""
    query = dict(parse_qsl(query_string))
    ttclid = read_ttclid(query.get("ttclid"))
    if ttclid is None:
        return None
    return Click(
        ttclid=ttclid,
        click_ms=now_ms,
        landing_url=landing_url[:2048],
        referrer=referrer[:2048] if referrer else None,
        utm={k: query[k][:200] for k in UTM_FIELDS if query.get(k)},
    )


def build_event(
    envelope: Envelope,
    event_id: str,
    hashed: HashedUser,
    session: Session,
    origin: Origin,
    decision: ConsentDecision,
) -> dict[str, Any]:
    """The TikTok ``data[]`` object for one event, ready to send."""
    assert envelope.event is not None
    user: dict[str, Any] = {}
    if decision.keep_personal_data:
        external = list(hashed.external_ids)
        if not external and session.visitor_id:
            external = [normalize.sha256_hex(session.visitor_id)]
        for key, values in (("email", hashed.emails), ("phone", hashed.phones),
                            ("external_id", external)):  # fmt: skip
            if values:
                user[key] = list(values)
        for key, value in (("first_name", hashed.first_name), ("last_name", hashed.last_name),
                           ("zip_code", hashed.zip_code)):  # fmt: skip
            if value:
                user[key] = value
    given = envelope.user
    browser = origin.source == "browser"
    given_ttclid = strip_pixel_click_suffix(given.ttclid) if given.ttclid else None
    # a click of the visitor's own landing first; one borrowed through a link only fills in
    click = session.click or origin.click or session.borrowed_click
    stored = click.ttclid if click else None
    # the browser's own click (captured server-side, its page's included) beats what page script
    # claims; a backend that kept the ttclid with the order knows better than the event's page,
    # and the page it names better than an older session
    if browser:
        ttclid = stored or given_ttclid
    else:
        on_page = click_from_page(envelope.page_url, envelope.page_referrer, 0)
        ttclid = given_ttclid or (on_page.ttclid if on_page else None) or stored
    ttp = origin.ttp if browser else (given.ttp or session.ttp)
    ip = origin.ip if browser else (given.ip or session.ip)
    user_agent = origin.user_agent if browser else (given.user_agent or session.user_agent)
    for key, value in (("ttclid", ttclid), ("ttp", ttp), ("ip", ip),
                       ("user_agent", user_agent), ("locale", given.locale)):  # fmt: skip
        if value:
            user[key] = value
    for key, raw in (("country", given.country), ("city", given.city), ("state", given.state)):
        place = normalize.normalize_place(raw) if raw else None
        if place:
            user[key] = place
    # the page the event names, else the buyer's last one; never one made up: TikTok's docs ask
    # web events for the page object and recommend its url, and its own sGTM template sends
    # ``page: {}`` when it knows none
    page_url = envelope.page_url or session.page_url
    page = {"url": page_url} if page_url else {}
    if envelope.page_referrer:
        page["referrer"] = envelope.page_referrer
    return {
        "event": envelope.event,
        "event_time": envelope.timestamp_s,
        "event_id": event_id,
        "user": user,
        "properties": envelope.properties,
        "page": page,
        "limited_data_use": decision.limited_data_use,
    }


def encode(event: dict[str, Any]) -> bytes:
    """The queued form of an event."""
    return orjson.dumps(event)
