"""The compact receipt record, written by the Lua scripts of ingest and settlement and read here.

A receipt is not a key of its own (Redis spends 100 to 200 bytes on every key): it is a record in
the hash of its time bucket (``keys.receipts_key``), under the field of its ``event_id``. The
field's value holds the records of every ``(pixel, canonical event)`` with that event_id
received in the bucket, joined by ``\\x1e``; a record's fields are joined by ``\\x1f``:

``pair number, state, received ms, source, attempts, first try (ms after received), request
reference, duplicates, click``, then optional ``name, value`` pairs (:data:`EXTRAS`).

* the pair number stands for ``pixel\\x1fevent`` (``keys.RECEIPT_PAIRS_HASH``);
* the state is one letter (:data:`STATES`);
* the request reference of a delivered receipt is ``<request id>:<line>``: its payload is that
  line of the request's stored body and TikTok's answer is the request's (``keys.request_key``);
  retrying and dead receipts keep their payload and TikTok's answer in their extras;
* click is ``1`` when the payload sent carried a ``ttclid``, ``0`` when not, empty before.

Strings written into a record never hold ``\\x1e`` or ``\\x1f`` (:func:`clean`; JSON escapes
them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATES = {
    "q": "queued",
    "r": "retrying",
    "d": "delivered",
    "x": "dead",
    "s": "suppressed",
}
EXTRAS = (
    "twin", "queued_as", "send_as", "reason", "last_try_ms", "next_try_ms", "dead_ms",
    "replayed_ms", "http_status", "code", "message", "request_id", "payload",
)  # fmt: skip
# the extras a delivered receipt drops: its request holds TikTok's answer and its payload
ATTEMPT_EXTRAS = (
    "reason", "last_try_ms", "next_try_ms", "dead_ms", "http_status", "code", "message",
    "request_id", "payload",
)  # fmt: skip

LUA = (
    r"""
local EXTRAS = {"""
    + ", ".join(f"'{name}'" for name in EXTRAS)
    + r"""}
local ATTEMPT_EXTRAS = {"""
    + ", ".join(f"'{name}'" for name in ATTEMPT_EXTRAS)
    + r"""}
-- the records of one event_id in one bucket
local function rdecode(value)
  local out = {}
  if not value then return out end
  for rec in string.gmatch(value, '[^\30]+') do
    local f = {}
    for part in string.gmatch(rec .. '\31', '([^\31]*)\31') do f[#f + 1] = part end
    local r = {pair = f[1], state = f[2], received = f[3], source = f[4], attempts = f[5],
      first = f[6], ref = f[7], dups = f[8], click = f[9], x = {}}
    for i = 10, #f - 1, 2 do r.x[f[i]] = f[i + 1] end
    out[#out + 1] = r
  end
  return out
end
local function rencode(list)
  local recs = {}
  for _, r in ipairs(list) do
    local f = {r.pair, r.state, r.received, r.source or '', r.attempts or '0', r.first or '',
      r.ref or '', r.dups or '0', r.click or ''}
    for _, k in ipairs(EXTRAS) do
      local v = r.x[k]
      if v and v ~= '' then f[#f + 1] = k; f[#f + 1] = v end
    end
    recs[#recs + 1] = table.concat(f, '\31')
  end
  return table.concat(recs, '\30')
end
local function rget(bucket, event_id)
  return rdecode(redis.call('HGET', bucket, event_id))
end
local function rput(bucket, event_id, list)
  if #list == 0 then redis.call('HDEL', bucket, event_id)
  else redis.call('HSET', bucket, event_id, rencode(list)) end
end
local function rfind(list, pid)
  for i, r in ipairs(list) do if r.pair == pid then return i end end
  return nil
end
local function rnew(pid, received, source)
  return {pair = pid, state = 'q', received = received, source = source, attempts = '0',
    first = '', ref = '', dups = '0', click = '', x = {}}
end
-- the number of a pixel\31event pair; a new one when create is true (else nil)
local function pair_id(pairs, pair, create)
  local n = redis.call('HGET', pairs, pair)
  if n or not create then return n end
  n = tostring(redis.call('HINCRBY', pairs, '#', 1))
  redis.call('HSET', pairs, pair, n, '=' .. n, pair)
  return n
end
-- a bucket key's expiry, set when a settle writes a record ingest did not (expired, erased)
local function rexpire(bucket, ttl_ms, bucket_ms)
  if redis.call('PTTL', bucket) < 0 then
    local b = tonumber(string.match(bucket, ':(%d+)$'))
    redis.call('PEXPIREAT', bucket, (b + 1) * bucket_ms + ttl_ms)
  end
end
-- the state and attempt of a settle that is not a delivery: kept from a delivered receipt
local function rattempt(r, state, attempts, first, click, argv, from)
  for _, k in ipairs(ATTEMPT_EXTRAS) do r.x[k] = nil end
  r.state, r.attempts, r.first, r.click, r.ref = state, attempts, first, click, ''
  for i = from, #argv - 1, 2 do r.x[argv[i]] = argv[i + 1] end
end
"""
)


def clean(text: str) -> str:
    """``text`` without the record separators."""
    return text.replace("\x1e", " ").replace("\x1f", " ")


@dataclass(slots=True)
class Record:
    """One receipt record as stored (strings; see the module's docstring)."""

    pair: str
    state: str
    received_ms: int
    source: str
    attempts: int
    first_try_delta: str
    ref: str
    duplicates: int
    click: str
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def request(self) -> tuple[str, int] | None:
        """The delivered request's id and this event's line in it."""
        if not self.ref:
            return None
        request, _, line = self.ref.rpartition(":")
        return request, int(line)


def decode(value: bytes | str | None) -> list[Record]:
    """The records of one event_id in one bucket."""
    if not value:
        return []
    text = value.decode() if isinstance(value, bytes) else value
    out = []
    for rec in text.split("\x1e"):
        if not rec:
            continue
        f = rec.split("\x1f")
        f += [""] * (9 - len(f))
        extras = dict(zip(f[9::2], f[10::2], strict=False))
        out.append(
            Record(
                pair=f[0], state=f[1], received_ms=_int(f[2]), source=f[3],
                attempts=_int(f[4]), first_try_delta=f[5], ref=f[6], duplicates=_int(f[7]),
                click=f[8], extras=extras,
            )
        )  # fmt: skip
    return out


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def encode(records: list[Record]) -> str:
    """The stored value of ``records`` (the inverse of :func:`decode`)."""
    out = []
    for r in records:
        f = [
            r.pair, r.state, str(r.received_ms), r.source, str(r.attempts), r.first_try_delta,
            r.ref, str(r.duplicates), r.click,
        ]  # fmt: skip
        for name in EXTRAS:
            value = r.extras.get(name)
            if value:
                f += [name, value]
        out.append("\x1f".join(f))
    return "\x1e".join(out)
