"""The outbox's Lua scripts: the four settles (delivered, already sent, retry, dead) and the two
that move scheduled retries (the due ones back into the stream, all of them forward to now).

All keys are under ``{q}``. A settle acks and deletes the stream entry in the same call as its
receipt (a record in its time bucket, ``gateway/store/receipt_records.py``) and counter, and
changes nothing when run again (a call whose reply was lost with the
connection is retried by the worker). Built into calls by :class:`gateway.delivery.outbox.Outbox`.
"""

from __future__ import annotations

from gateway.store.connections import Lua
from gateway.store.receipt_records import LUA

DELIVERED = Lua(
    LUA
    + r"""
-- KEYS: stream, counters, the request's key, pairs, then the receipt buckets of the entries
-- ARGV: group, receipt ttl ms, bucket ms, request ttl ms, the request's body (zlib of its events'
--       JSON joined by newlines), request id, now ms, then TikTok's http status, code, message,
--       request_id, then for each entry: stream id, its bucket (index in KEYS from 5),
--       event_id, pixel\31event, attempts, first try ms, received ms, source, click (1/0)
-- One call settles a whole request: each entry's change is the same as if settled alone. An
-- entry no longer pending was settled already (the same call run again after its reply was
-- lost with the connection): nothing to do again. A receipt already delivered is a copy that a
-- racing worker delivered: its receipt stands, this one is a repeat.
local stream, counters, group = KEYS[1], KEYS[2], ARGV[1]
local ttl_ms, bucket_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local delivered, duplicate = 0, 0
local n = (#ARGV - 11) / 9
for i = 1, n do
  local a = 12 + 9 * (i - 1)
  if redis.call('XACK', stream, group, ARGV[a]) == 1 then
    redis.call('XDEL', stream, ARGV[a])
    local bucket, event_id = KEYS[4 + tonumber(ARGV[a + 1])], ARGV[a + 2]
    local pid = pair_id(KEYS[4], ARGV[a + 3], true)
    local list = rget(bucket, event_id)
    local j = rfind(list, pid)
    if j and list[j].state == 'd' then
      list[j].dups = tostring(tonumber(list[j].dups or '0') + 1)
      duplicate = duplicate + 1
    else
      if not j then
        j = #list + 1
        list[j] = rnew(pid, ARGV[a + 6], ARGV[a + 7])
        rexpire(bucket, ttl_ms, bucket_ms)
      end
      local r = list[j]
      rattempt(r, 'd', ARGV[a + 4], tostring(tonumber(ARGV[a + 5]) - tonumber(r.received)),
        ARGV[a + 8], {}, 1)
      r.ref = ARGV[6] .. ':' .. (i - 1)
      delivered = delivered + 1
    end
    rput(bucket, event_id, list)
  end
end
if delivered > 0 then
  redis.call('HSET', KEYS[3], 'b', ARGV[5], 't', ARGV[7], 'h', ARGV[8], 'c', ARGV[9],
    'm', ARGV[10], 'r', ARGV[11])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('HINCRBY', counters, 'delivered', delivered)
end
if duplicate > 0 then redis.call('HINCRBY', counters, 'duplicate', duplicate) end
return {delivered, duplicate}
"""
)

ALREADY_SENT = Lua(
    LUA
    + r"""
-- KEYS: stream, counters, receipts bucket, pairs
-- ARGV: stream id, group, event_id, pixel\31event
-- an entry no longer pending was settled already (a call run again after a lost reply)
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'duplicate', 1)
local pid = pair_id(KEYS[4], ARGV[4], false)
local list = rget(KEYS[3], ARGV[3])
local j = pid and rfind(list, pid)
if j then
  list[j].dups = tostring(tonumber(list[j].dups or '0') + 1)
  rput(KEYS[3], ARGV[3], list)
end
return 1
"""
)

# RETRY and DEAD write their receipt the same way: a delivered receipt stays delivered (the
# copy TikTok has is the receipt's; the worker skips this entry when it comes back)
_ATTEMPT = r"""
-- ARGV from ``at``: event_id, pixel\31event, received ms, source, attempts, first try ms,
-- click, receipt ttl ms, bucket ms, then receipt field/value pairs
local function attempt(bucket, pairs, state, at)
  local event_id = ARGV[at]
  local pid = pair_id(pairs, ARGV[at + 1], true)
  local list = rget(bucket, event_id)
  local j = rfind(list, pid)
  if j and list[j].state == 'd' then return end
  if not j then
    j = #list + 1
    list[j] = rnew(pid, ARGV[at + 2], ARGV[at + 3])
    rexpire(bucket, tonumber(ARGV[at + 7]), tonumber(ARGV[at + 8]))
  end
  local r = list[j]
  rattempt(r, state, ARGV[at + 4], tostring(tonumber(ARGV[at + 5]) - tonumber(r.received)),
    ARGV[at + 6], ARGV, at + 9)
  rput(bucket, event_id, list)
end
"""

RETRY = Lua(
    LUA
    + _ATTEMPT
    + r"""
-- KEYS: stream, retry zset, retry data hash, receipts bucket, counters, pairs
-- ARGV: stream id, group, dedup id, due ms, entry JSON, count it (1/0), then the receipt (see
--       attempt(), from 7)
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end  -- settled already
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
attempt(KEYS[4], KEYS[6], 'r', 7)
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[5], 'retried', 1) end
return 1
"""
)

DEAD = Lua(
    LUA
    + _ATTEMPT
    + r"""
-- KEYS: stream, dead stream, receipts bucket, counters, pairs
-- ARGV: stream id, group, n (dead entry field/value pair count * 2), dead entry pairs, then the
--       receipt (see attempt())
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end  -- settled already
redis.call('XDEL', KEYS[1], ARGV[1])
local n = tonumber(ARGV[3])
local entry = {}
for i = 4, 3 + n do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(entry))
attempt(KEYS[3], KEYS[5], 'x', 4 + n)
redis.call('HINCRBY', KEYS[4], 'dead', 1)
return 1
"""
)

MOVE_DUE = Lua("""
-- KEYS: retry zset, retry data hash, stream, pace hash
-- ARGV: now ms, at most this many due retries looked at, the moved-set key prefix (+ pixel),
--       allowance: moved retries a pixel may have in the stream (0: no limit),
--       ms between two of a pixel's retries at the limiter's pace, poll interval ms,
--       moved retries older than this (ms) no longer count
-- Returns {moved, looked at}.
-- A pixel's retries go back into the stream only as far as its allowance has room: the moved
-- ones still in the stream (settled ones leave it) are counted from the pixel's moved set, oldest
-- first, up to the first one still there (an over-count, never an under-count, when settles come
-- out of order). The rest of its due retries are spread over the time ahead at the pace it sends
-- at (the pace hash keeps where the pixel's spread ends), so they are not looked at again before
-- their turn and the retries behind them, other pixels' too, are.
local retry, data, stream, pace = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, prefix, allowance = tonumber(ARGV[1]), ARGV[3], tonumber(ARGV[4])
local step, interval, stale = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local room, spread, pace_of = {}, {}, {}
local moved = 0
-- room for the pixel's retries in the stream, and the pace its retries are sent at: the
-- limiter's, or slower when the oldest moved retry still in the stream has waited longer than
-- that pace explains (TikTok throttles the pixel): the allowance took that long, not one interval
local function look_at(pixel)
  local set = prefix .. pixel
  local waited = 0
  while true do
    local oldest = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
    if #oldest == 0 then break end
    if tonumber(oldest[2]) > now - stale
      and #redis.call('XRANGE', stream, oldest[1], oldest[1]) > 0 then
      waited = now - tonumber(oldest[2])
      break
    end
    redis.call('ZREM', set, oldest[1])
  end
  room[pixel] = allowance - redis.call('ZCARD', set)
  pace_of[pixel] = math.max(step, waited / allowance)
end
for _, member in ipairs(due) do
  local pixel = string.match(member, '^([^\\31]*)\\31') or ''
  if allowance > 0 and room[pixel] == nil then look_at(pixel) end
  if allowance <= 0 or room[pixel] > 0 then
    local raw = redis.call('HGET', data, member)
    if raw then
      local entry = cjson.decode(raw)
      local fields = {}
      for k, v in pairs(entry) do fields[#fields + 1] = k; fields[#fields + 1] = tostring(v) end
      local id = redis.call('XADD', stream, '*', unpack(fields))
      redis.call('HDEL', data, member)
      if allowance > 0 then
        redis.call('ZADD', prefix .. pixel, now, id)
        room[pixel] = room[pixel] - 1
      end
      moved = moved + 1
    end
    redis.call('ZREM', retry, member)
  else
    local at = spread[pixel]
    if at == nil then
      at = math.max(tonumber(redis.call('HGET', pace, pixel)) or 0, now + interval)
    end
    redis.call('ZADD', retry, at, member)
    spread[pixel] = at + pace_of[pixel]
  end
end
for pixel, _ in pairs(room) do redis.call('PEXPIRE', prefix .. pixel, stale) end
local last = 0
for pixel, at in pairs(spread) do
  redis.call('HSET', pace, pixel, string.format('%d', at))
  last = math.max(last, at)
end
-- the hash expires when its last spread ends: a spread in the past means nothing
if last > 0 and redis.call('PTTL', pace) < last - now + interval then
  redis.call('PEXPIRE', pace, string.format('%d', last - now + interval))
end
return {moved, #due}
""")

EXPEDITE = Lua("""
-- KEYS: retry zset, pace hash; ARGV: now ms, at most this many
-- bring every scheduled retry forward to now: TikTok answers again, nobody should wait minutes;
-- MOVE_DUE spreads them at the limiter's pace again, from now (the old spreads are forgotten)
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, member in ipairs(later) do redis.call('ZADD', KEYS[1], ARGV[1], member) end
redis.call('DEL', KEYS[2])
return #later
""")
