"""The outbox's Lua scripts: the four settles (delivered, already sent, retry, dead) and the two
that move scheduled retries (the due ones back into the stream, all of them forward to now).

All keys are under ``{q}``. A settle acks and deletes the stream entry in the same call as its
receipt and counter, and changes nothing when run again (a call whose reply was lost with the
connection is retried by the worker). Built into calls by :class:`gateway.delivery.outbox.Outbox`.
"""

from __future__ import annotations

from gateway.store.connections import Lua

DELIVERED = Lua("""
-- KEYS: stream, counters, then each entry's sent marker and receipt
-- ARGV: group, sent ttl s, receipt ttl s, the request body, where data[0] starts in it (1-based),
--       the number of receipt pairs common to every entry, those pairs, then for each entry:
--       stream id, attempts, first try ms, length of its JSON in the body
-- One call settles a whole request: each entry's change is the same as if settled alone.
-- The sent marker holds the stream id, so the same call run again (its reply was lost with the
-- connection, and the worker retries) changes nothing.
local stream, counters, group = KEYS[1], KEYS[2], ARGV[1]
local body, at, m = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local common = {}
for i = 7, 6 + m do common[#common + 1] = ARGV[i] end
local n = (#KEYS - 2) / 2
local ids = {}
local delivered, duplicate = 0, 0
for i = 1, n do
  local a = 3 + m + 4 * i
  local receipt = KEYS[2 + 2 * i]
  local size = tonumber(ARGV[a + 3])
  ids[i] = ARGV[a]
  local marker = KEYS[1 + 2 * i]
  if redis.call('SET', marker, ARGV[a], 'NX', 'EX', ARGV[2]) then
    redis.call('HSET', receipt, 'state', 'delivered', 'attempts', ARGV[a + 1],
      'first_try_ms', ARGV[a + 2], 'payload', string.sub(body, at, at + size - 1), unpack(common))
    redis.call('EXPIRE', receipt, ARGV[3])
    delivered = delivered + 1
  elseif redis.call('GET', marker) ~= ARGV[a] then
    -- a copy was delivered meanwhile (a racing worker): its receipt stands, this is a repeat
    redis.call('HINCRBY', receipt, 'duplicates', 1)
    duplicate = duplicate + 1
  end  -- else: this very entry, settled by a call whose reply was lost; nothing to do again
  at = at + size + 1
end
for i = 1, n, 1000 do  -- unpack() is bounded by Lua's C stack
  local last = math.min(i + 999, n)
  redis.call('XACK', stream, group, unpack(ids, i, last))
  redis.call('XDEL', stream, unpack(ids, i, last))
end
if delivered > 0 then redis.call('HINCRBY', counters, 'delivered', delivered) end
if duplicate > 0 then redis.call('HINCRBY', counters, 'duplicate', duplicate) end
return {delivered, duplicate}
""")

ALREADY_SENT = Lua("""
-- KEYS: stream, counters, receipt
-- ARGV: stream id, group
-- an entry no longer pending was settled already (a call run again after a lost reply)
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'duplicate', 1)
if redis.call('EXISTS', KEYS[3]) == 1 then
  -- the sent marker proves an earlier copy was delivered, whatever a later ingest wrote here
  redis.call('HSET', KEYS[3], 'state', 'delivered')
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
end
return 1
""")

RETRY = Lua("""
-- KEYS: stream, retry zset, retry data hash, receipt, counters
-- ARGV: stream id, group, dedup id, due ms, entry JSON, receipt ttl s, count it (1/0),
--       then receipt field/value pairs
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end  -- settled already
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[4], 'state', 'retrying', 'next_try_ms', ARGV[4], unpack(fields))
redis.call('EXPIRE', KEYS[4], ARGV[6])
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[5], 'retried', 1) end
return 1
""")

DEAD = Lua("""
-- KEYS: stream, dead stream, receipt, counters
-- ARGV: stream id, group, receipt ttl s, n (dead entry field/value pair count * 2),
--       dead entry pairs, then receipt pairs
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end  -- settled already
redis.call('XDEL', KEYS[1], ARGV[1])
local n = tonumber(ARGV[4])
local entry = {}
for i = 5, 4 + n do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(entry))
local fields = {}
for i = 5 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[3], 'state', 'dead', unpack(fields))
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('HINCRBY', KEYS[4], 'dead', 1)
return 1
""")

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
