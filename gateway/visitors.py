"""Visitors and stitching: the click, ``_ttp``, IP and user agent of a visitor's latest session,
and the links from hashed e-mail, hashed phone and customer id to visitors.

Every change is one Lua script over keys under the ``{id}`` hash tag:

* a browser request updates its visitor's session (IP, user agent, ``_ttp``, page), stores a new
  click (a newer click replaces an older one; the same ``ttclid`` seen again keeps its first
  time), links the hashed identifiers it carries, and takes over a newer click that another
  visitor linked to the same identifier has (the in-app browser that hops to Safari, another
  device);
* a server event finds its visitor by ``anonymous_id`` (the signed cookie the backend received),
  else by the newest visitor linked to its customer id, e-mail or phone, links its identifiers,
  and gets that visitor's session back — so an order webhook that carries only an e-mail is
  sent with the click, ``_ttp``, IP and user agent of the buyer's session.

Clicks older than :data:`~gateway.keys.CLICK_TTL_S` are never attached. Visitor records expire
:data:`~gateway.keys.VISITOR_TTL_S` after the last activity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from gateway import keys
from gateway.connections import Lua, LuaCall, RedisClient, RunCalls, eval_many

LINK_KINDS = ("user_id", "email", "phone")  # lookup order for server events: most specific first
LINK_KEEP = 20  # visitors remembered per identifier

_STITCH = Lua("""
-- KEYS[1]: visitor key of the given visitor (or a placeholder), KEYS[2..]: link keys
-- ARGV: visitor id or '', now ms, click ttl ms, visitor ttl s, visitor key prefix,
--       JSON {session = {field = value}, click = {...} or absent}, link keep count
local vid = ARGV[1]
local now = tonumber(ARGV[2])
local click_ttl = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local prefix = ARGV[5]
local update = cjson.decode(ARGV[6])
local keep = tonumber(ARGV[7])
if vid == '' then
  for i = 2, #KEYS do
    local newest = redis.call('ZREVRANGE', KEYS[i], 0, 0)
    if newest[1] then vid = newest[1]; break end
  end
  if vid == '' then return {} end
end
local vkey = prefix .. vid
local function click_of(key)
  local raw = redis.call('HGET', key, 'click')
  if not raw then return nil end
  local c = cjson.decode(raw)
  if now - tonumber(c.click_ms) > click_ttl then return nil end
  return c
end
if type(update.session) == 'table' then
  for k, v in pairs(update.session) do redis.call('HSET', vkey, k, v) end
end
local mine = click_of(vkey)
if type(update.click) == 'table' then
  local new = update.click
  local newer = tonumber(new.click_ms) >= tonumber(mine and mine.click_ms or 0)
  if not mine or (mine.ttclid ~= new.ttclid and newer) then
    redis.call('HSET', vkey, 'click', cjson.encode(new))
    mine = new
  end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, vid)
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -keep - 1)
  redis.call('EXPIRE', KEYS[i], ttl)
  for _, other in ipairs(redis.call('ZREVRANGE', KEYS[i], 0, -1)) do
    if other ~= vid then
      local theirs = click_of(prefix .. other)
      if theirs and (not mine or tonumber(theirs.click_ms) > tonumber(mine.click_ms)) then
        redis.call('HSET', vkey, 'click', cjson.encode(theirs))
        mine = theirs
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
    """What the gateway knows about the visitor behind an event."""

    visitor_id: str | None = None
    click: Click | None = None
    ttp: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    page_url: str | None = None


@dataclass(frozen=True, slots=True)
class StitchRequest:
    """One visitor update: who (if known), which identifiers, what the browser showed."""

    visitor_id: str | None
    links: Sequence[tuple[str, str]] = ()  # (kind, hashed value)
    session: Mapping[str, str] = field(default_factory=dict)  # ttp, ip, user_agent, page_url
    click: Click | None = None


class VisitorStore:
    """Reads and writes visitors and links."""

    def __init__(self, redis: RedisClient, run: RunCalls | None = None) -> None:
        self.redis = redis
        self._run: RunCalls = run or partial(eval_many, redis)

    async def stitch_many(self, requests: Sequence[StitchRequest], now_ms: int) -> list[Session]:
        """Apply every request in one round trip; the resulting session of each, in order."""
        if not requests:
            return []
        calls: list[LuaCall] = []
        for request in requests:
            ordered = sorted(request.links, key=lambda link: LINK_KINDS.index(link[0]))
            link_keys = [keys.link_key(kind, value) for kind, value in ordered]
            update: dict[str, Any] = {"session": dict(request.session) or None}
            if request.click is not None:
                update["click"] = request.click.to_json()
            visitor = request.visitor_id or ""
            args: list[str | bytes | int | float] = [
                visitor, now_ms, keys.CLICK_TTL_S * 1000, keys.VISITOR_TTL_S,
                keys.visitor_key(""), orjson.dumps(update), LINK_KEEP,
            ]  # fmt: skip
            calls.append((_STITCH, [keys.visitor_key(visitor or "-"), *link_keys], args))
        replies = await self._run(calls)
        return [_session(reply, now_ms) for reply in replies]

    async def stitch(self, request: StitchRequest, now_ms: int) -> Session:
        """:meth:`stitch_many` for one request."""
        (session,) = await self.stitch_many([request], now_ms)
        return session


def _session(reply: list[bytes], now_ms: int) -> Session:
    if not reply:
        return Session()
    visitor = reply[0].decode()
    fields = {reply[i].decode(): reply[i + 1].decode() for i in range(1, len(reply) - 1, 2)}
    click = Click.from_json(orjson.loads(fields["click"])) if "click" in fields else None
    if click is not None and now_ms - click.click_ms > keys.CLICK_TTL_S * 1000:
        click = None
    return Session(
        visitor_id=visitor,
        click=click,
        ttp=fields.get("ttp"),
        ip=fields.get("ip"),
        user_agent=fields.get("user_agent"),
        page_url=fields.get("page_url"),
    )
