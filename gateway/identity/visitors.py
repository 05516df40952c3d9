"""Visitors and stitching: the click, ``_ttp``, IP and user agent of a visitor's latest session,
and the links from hashed e-mail, hashed phone and customer id to visitors.

Every change is one Lua script over keys under the ``{id}`` hash tag. A link has a provenance:

* a **claim** — a browser (``POST /e``) named the identifier: anyone can type anyone's e-mail;
* **verified** — a server event, authenticated by the write key, named both the identifier and
  the visitor (its signed ``anonymous_id``): the merchant's backend vouches for the pair.

What each request does:

* a browser request updates its own visitor's session (IP, user agent, ``_ttp``, page), stores a
  click from its own landing (a newer click replaces an older one; the same ``ttclid`` seen again
  keeps its first time) and claims the identifiers it carries. A visitor with no click of its own
  *borrows* the click of the other visitors linked to those identifiers when their own clicks
  agree on one ``ttclid`` (the in-app browser's hop to Safari). A borrowed click is kept apart
  from the visitor's own (field ``borrowed``): it is attached on the server to that visitor's
  events, never written into its cookies, and never replaces a click of its own;
* a server event that names its visitor links its identifiers as verified and gets that
  visitor's session back;
* a server event that names no visitor (an order webhook with only an e-mail) gets the session
  of the newest visitor verified for its customer id, e-mail or phone (most specific first); else,
  when exactly one visitor claimed any of its identifiers, that visitor's session; when several
  did, nobody's session — only a click, if every claimant carries the same one. Matched through a
  verified link, it links its identifiers to that visitor as verified; through a claim, nothing.

Clicks older than ``TTGW_CLICK_TTL_S`` (default :data:`~gateway.keys.CLICK_TTL_S`) are never
attached, links older than ``TTGW_SESSION_TTL_S`` (default :data:`~gateway.keys.VISITOR_TTL_S`)
never count, and visitor records and link sets expire that long after the last activity.
:mod:`gateway.identity.forget` erases one person's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

import orjson

from gateway.store import keys
from gateway.store.connections import Lua, LuaCall, RedisClient, RunCalls, eval_many

LINK_KINDS = ("user_id", "email", "phone")  # lookup order for server events: most specific first
LINK_KEEP = 20  # visitors remembered per identifier and provenance


class LinkSource(StrEnum):
    """Who vouches for the links a stitch writes."""

    CLAIM = "claim"  # a browser named the identifier
    VERIFIED = "verified"  # the write key's holder named the identifier and the visitor


def link_keys(kind: str, hashed_value: str) -> tuple[str, str]:
    """The claim and the verified link keys of one identifier (separate sets, so a flood of
    browser claims can never push a verified link out)."""
    return keys.link_key(kind, hashed_value), keys.link_key(f"{kind}:verified", hashed_value)


_STITCH = Lua("""
-- KEYS[1]: the named visitor's key (a placeholder when none is named);
-- KEYS[2..n+1]: claim link keys; KEYS[n+2..2n+1]: verified link keys, in the same order
-- ARGV: visitor id or '', now ms, click ttl ms, visitor ttl s, visitor key prefix,
--       JSON {session = {field = value}, click = {...} or absent}, link keep count,
--       'claim' or 'verified' (the provenance of the links written)
local vid = ARGV[1]
local now = tonumber(ARGV[2])
local click_ttl = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local prefix = ARGV[5]
local update = cjson.decode(ARGV[6])
local keep = tonumber(ARGV[7])
local source = ARGV[8]
local n = (#KEYS - 1) / 2
local since = now - ttl * 1000
local function click_of(key, field)
  local raw = redis.call('HGET', key, field)
  if not raw then return nil end
  local c = cjson.decode(raw)
  if now - tonumber(c.click_ms) > click_ttl then return nil end
  c.raw = raw
  return c
end
local function linked(key, newest_only)
  local out = {}
  for _, v in ipairs(redis.call('ZREVRANGEBYSCORE', key, '+inf', since)) do
    if redis.call('EXISTS', prefix .. v) == 1 then
      table.insert(out, v)
      if newest_only then break end
    end
  end
  return out
end
-- the one click the given clicks agree on (its first time), or nil when none or they disagree
local function agree(clicks)
  local found = nil
  for _, c in ipairs(clicks) do
    if found and found.ttclid ~= c.ttclid then return nil end
    if not found or tonumber(c.click_ms) < tonumber(found.click_ms) then found = c end
  end
  return found
end
if vid == '' then
  for i = 1, n do
    local v = linked(KEYS[n + 1 + i], true)[1]
    if v then vid = v; break end
  end
  if vid == '' then
    local seen, claimants = {}, {}
    for i = 1, n do
      for _, v in ipairs(linked(KEYS[1 + i], false)) do
        if not seen[v] then seen[v] = true; table.insert(claimants, v) end
      end
    end
    if #claimants == 0 then return {} end
    if #claimants > 1 then
      -- browsers disagree about who this is: nobody's session, only a click all of them carry
      local clicks = {}
      for _, v in ipairs(claimants) do
        local c = click_of(prefix .. v, 'click') or click_of(prefix .. v, 'borrowed')
        if not c then return {} end
        table.insert(clicks, c)
      end
      local agreed = agree(clicks)
      if not agreed then return {} end
      return {'', 'borrowed', agreed.raw}
    end
    vid = claimants[1]
    source = 'read'  -- one browser's claim: its session is read, nothing is linked
  end
end
local vkey = prefix .. vid
if type(update.session) == 'table' then
  for k, v in pairs(update.session) do redis.call('HSET', vkey, k, v) end
end
local mine = click_of(vkey, 'click')
if type(update.click) == 'table' then
  local new = update.click
  local newer = tonumber(new.click_ms) >= tonumber(mine and mine.click_ms or 0)
  if not mine or (mine.ttclid ~= new.ttclid and newer) then
    redis.call('HSET', vkey, 'click', cjson.encode(new))
    mine = new
  end
end
if source ~= 'read' and n > 0 then
  local first = source == 'verified' and n + 1 or 1
  for i = first + 1, first + n do
    redis.call('ZADD', KEYS[i], now, vid)
    redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -keep - 1)
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  if not mine then
    -- borrow the own click of the others linked to these identifiers, when they agree on one
    local clicks, seen = {}, {}
    for i = 2, 2 * n + 1 do
      for _, other in ipairs(linked(KEYS[i], false)) do
        if other ~= vid and not seen[other] then
          seen[other] = true
          local theirs = click_of(prefix .. other, 'click')
          if theirs then table.insert(clicks, theirs) end
        end
      end
    end
    local lent = agree(clicks)
    if lent then
      local held = click_of(vkey, 'borrowed')
      local newer = held and tonumber(lent.click_ms) > tonumber(held.click_ms)
      if not held or (held.ttclid ~= lent.ttclid and newer) then
        redis.call('HSET', vkey, 'borrowed', lent.raw)
      end
    end
  end
end
if redis.call('EXISTS', vkey) == 1 then redis.call('EXPIRE', vkey, ttl) end
local out = redis.call('HGETALL', vkey)
table.insert(out, 1, vid)
return out
""")


@dataclass(frozen=True, slots=True)
class Click:
    """A TikTok ad click captured from a landing URL."""

    ttclid: str
    click_ms: int
    landing_url: str | None = None
    referrer: str | None = None
    utm: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        out: dict[str, Any] = {"ttclid": self.ttclid, "click_ms": self.click_ms}
        if self.landing_url:
            out["landing_url"] = self.landing_url
        if self.referrer:
            out["referrer"] = self.referrer
        out.update(self.utm)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Click:
        """Read the stored form back."""
        return cls(
            ttclid=str(data["ttclid"]),
            click_ms=int(float(data["click_ms"])),
            landing_url=data.get("landing_url"),
            referrer=data.get("referrer"),
            utm={k: str(v) for k, v in data.items() if k.startswith("utm_")},
        )


@dataclass(frozen=True, slots=True)
class Session:
    """What the gateway knows about the visitor behind an event.

    ``click`` is the visitor's own, from its own landing: the only one a cookie may carry.
    ``borrowed_click`` came through a link (see the module docstring): it is attached on the
    server to the visitor's events when it has no click of its own, and never leaves the server.
    """

    visitor_id: str | None = None
    click: Click | None = None
    borrowed_click: Click | None = None
    ttp: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    page_url: str | None = None


@dataclass(frozen=True, slots=True)
class StitchRequest:
    """One visitor update: who (if known), which identifiers, what the browser showed.

    ``source`` is the provenance of the links written for a named visitor: a browser's claim
    unless the write key's holder named the visitor. A request that names no visitor only reads.
    """

    visitor_id: str | None
    links: Sequence[tuple[str, str]] = ()  # (kind, hashed value)
    session: Mapping[str, str] = field(default_factory=dict)  # ttp, ip, user_agent, page_url
    click: Click | None = None
    source: LinkSource = LinkSource.CLAIM


class VisitorStore:
    """Reads and writes visitors and links."""

    def __init__(
        self,
        redis: RedisClient,
        run: RunCalls | None = None,
        *,
        click_ttl_s: int = keys.CLICK_TTL_S,
        session_ttl_s: int = keys.VISITOR_TTL_S,
    ) -> None:
        self.redis = redis
        self._run: RunCalls = run or partial(eval_many, redis)
        self.click_ttl_s, self.session_ttl_s = click_ttl_s, session_ttl_s

    async def stitch_many(self, requests: Sequence[StitchRequest], now_ms: int) -> list[Session]:
        """Apply every request in one round trip; the resulting session of each, in order."""
        if not requests:
            return []
        calls: list[LuaCall] = []
        for request in requests:
            ordered = sorted(request.links, key=lambda link: LINK_KINDS.index(link[0]))
            pairs = [link_keys(kind, value) for kind, value in ordered]
            update: dict[str, Any] = {"session": dict(request.session) or None}
            if request.click is not None:
                update["click"] = request.click.to_json()
            visitor = request.visitor_id or ""
            args: list[str | bytes | int | float] = [
                visitor, now_ms, self.click_ttl_s * 1000, self.session_ttl_s,
                keys.visitor_key(""), orjson.dumps(update), LINK_KEEP, request.source.value,
            ]  # fmt: skip
            claims, verified = [p[0] for p in pairs], [p[1] for p in pairs]
            calls.append((_STITCH, [keys.visitor_key(visitor or "-"), *claims, *verified], args))
        replies = await self._run(calls)
        return [_session(reply, now_ms - self.click_ttl_s * 1000) for reply in replies]

    async def stitch(self, request: StitchRequest, now_ms: int) -> Session:
        """:meth:`stitch_many` for one request."""
        (session,) = await self.stitch_many([request], now_ms)
        return session


def _session(reply: list[bytes], oldest_click_ms: int) -> Session:
    if not reply:
        return Session()
    visitor = reply[0].decode()
    fields = {reply[i].decode(): reply[i + 1].decode() for i in range(1, len(reply) - 1, 2)}
    return Session(
        visitor_id=visitor or None,  # '' when claims disagree: no one's session, maybe a click
        click=_click(fields.get("click"), oldest_click_ms),
        borrowed_click=_click(fields.get("borrowed"), oldest_click_ms),
        ttp=fields.get("ttp"),
        ip=fields.get("ip"),
        user_agent=fields.get("user_agent"),
        page_url=fields.get("page_url"),
    )


def _click(raw: str | None, oldest_click_ms: int) -> Click | None:
    click = Click.from_json(orjson.loads(raw)) if raw else None
    if click is not None and click.click_ms < oldest_click_ms:
        return None
    return click
