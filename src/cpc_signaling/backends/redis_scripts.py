"""The Lua scripts of the Redis backend: every write to shared state is one script.

A script runs atomically, so "apply an event to the canonical state, give it the
document's next sequence number and publish it" is one step that no other
instance can interleave with. ``_APPLY`` mirrors ``core.state.DocumentState``
exactly (the conformance suite checks it against the Python reference).

Keys (``P`` = prefix, ``D`` = document id, ``I`` = instance id)::

    P:doc:D            pub/sub channel: "SEQ ORIGIN EVENT" envelopes (EVENT = msgpack)
    P:doc:D:seq        integer: the last sequence number given
    P:doc:D:conns      hash  connection id -> user id
    P:doc:D:ucount     hash  user id -> number of its connections here
    P:doc:D:users      zset  user id, scored by the seq of its first join (join order)
    P:doc:D:pres       hash  "USER KIND" -> "SEQ FRAME": presence in force
    P:doc:D:stored     list  Annotation/Comment frames, oldest first, trimmed
    P:inst:I           set   "D CONN" for every membership held by instance I
    P:alive:I          string with a TTL: instance I is alive while it exists
    P:instances        set   instance ids that may hold memberships
    P:ctl:I            pub/sub channel: instance I's own heartbeat echo (listener check)

Scripts build key names from the prefix (fine on a single Redis or a replica
set; Redis Cluster is not supported).
"""

from __future__ import annotations

from typing import Final

_PRELUDE: Final = r"""
local PRESENCE = {PresenceUpdate=true, CursorUpdate=true, SelectionUpdate=true,
                  TypingIndicator=true, PresenceStatus=true}
local STORED = {Annotation=true, Comment=true}
local SUPERSEDED = {PresenceUpdate={'CursorUpdate', 'SelectionUpdate', 'TypingIndicator'}}

local function mp_str(s)
  local n = #s
  if n < 32 then return string.char(0xa0 + n) .. s end
  if n < 256 then return string.char(0xd9, n) .. s end
  if n < 65536 then return string.char(0xda, math.floor(n / 256), n % 256) .. s end
  error('string too long')
end

local function mp_bin(s)
  local n = #s
  if n < 256 then return string.char(0xc4, n) .. s end
  if n < 65536 then return string.char(0xc5, math.floor(n / 256), n % 256) .. s end
  return string.char(0xc6, math.floor(n / 16777216), math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256) .. s
end

-- msgspec.msgpack.encode(Relayed(conn, user, kind, frame)): the frame is sent once,
-- the script builds the envelope's payload.
local function relayed_payload(conn, user, kind, frame)
  return string.char(0x95) .. mp_str('R') .. mp_str(conn) .. mp_str(user) .. mp_str(kind)
         .. mp_bin(frame)
end

-- msgspec.msgpack.encode(Left(conn, user)): a tagged, array-like struct.
local function left_payload(conn, user)
  return string.char(0x93) .. mp_str('L') .. mp_str(conn) .. mp_str(user)
end

local function instance_of(conn)
  local cut = 0
  for i = #conn, 1, -1 do
    if string.byte(conn, i) == 47 then cut = i; break end  -- '/'
  end
  return string.sub(conn, 1, cut - 1)
end

local function doc_keys(prefix, doc)
  local b = prefix .. ':doc:' .. doc
  return b, {b .. ':seq', b .. ':conns', b .. ':ucount', b .. ':users', b .. ':pres',
             b .. ':stored'}
end

-- Apply one event to the canonical state of `doc`, give it the next seq and
-- publish it. Returns the seq. Mirrors DocumentState.apply.
local function apply(prefix, doc, etype, conn, user, kind, frame, payload, origin,
                     max_members, max_stored, ttl)
  local chan, k = doc_keys(prefix, doc)
  local kseq, kconns, kucount, kusers, kpres, kstored = k[1], k[2], k[3], k[4], k[5], k[6]
  local seq = redis.call('INCR', kseq)
  if etype == 'J' then
    if redis.call('HEXISTS', kconns, conn) == 0
        and redis.call('HLEN', kconns) < max_members then
      redis.call('HSET', kconns, conn, user)
      if redis.call('HINCRBY', kucount, user, 1) == 1 then
        redis.call('ZADD', kusers, seq, user)
      end
      local kinst = prefix .. ':inst:' .. instance_of(conn)
      redis.call('SADD', kinst, doc .. ' ' .. conn)
      redis.call('PEXPIRE', kinst, ttl)
    end
  elseif etype == 'L' then
    local owner = redis.call('HGET', kconns, conn)
    if owner then
      redis.call('HDEL', kconns, conn)
      redis.call('SREM', prefix .. ':inst:' .. instance_of(conn), doc .. ' ' .. conn)
      if redis.call('HINCRBY', kucount, owner, -1) <= 0 then
        redis.call('HDEL', kucount, owner)
        redis.call('ZREM', kusers, owner)
        for name, _ in pairs(PRESENCE) do redis.call('HDEL', kpres, owner .. ' ' .. name) end
      end
    end
  else
    local ok
    if conn == '' then
      ok = STORED[kind] == true
    else
      ok = redis.call('HGET', kconns, conn) == user
    end
    if ok then
      if STORED[kind] then
        redis.call('RPUSH', kstored, frame)
        redis.call('LTRIM', kstored, -max_stored, -1)
      else
        for _, old in ipairs(SUPERSEDED[kind] or {}) do
          redis.call('HDEL', kpres, user .. ' ' .. old)
        end
        redis.call('HSET', kpres, user .. ' ' .. kind, seq .. ' ' .. frame)
        if redis.call('PTTL', kpres) < 0 then redis.call('PEXPIRE', kpres, ttl) end
      end
    end
  end
  -- Presence is most of the traffic: it does not refresh TTLs (joins, leaves and
  -- stored messages do, and instances touch documents they have members in), so a
  -- cursor move costs 4 commands instead of 10.
  if etype ~= 'R' or STORED[kind] then
    for _, key in ipairs(k) do redis.call('PEXPIRE', key, ttl) end
  end
  if payload == '' then
    if etype == 'R' then
      payload = relayed_payload(conn, user, kind, frame)
    else
      payload = string.char(0x93) .. mp_str(etype) .. mp_str(conn) .. mp_str(user)
    end
  end
  redis.call('PUBLISH', chan, seq .. ' ' .. origin .. ' ' .. payload)
  return seq
end

-- Apply Left for every membership of a dead instance, at most `batch` of them.
local function reap(prefix, dead, origin, max_members, max_stored, ttl, batch)
  local kinst = prefix .. ':inst:' .. dead
  local done = 0
  local members = redis.call('SPOP', kinst, batch)
  for _, m in ipairs(members) do
    local sp = string.find(m, ' ', 1, true)
    local doc, conn = string.sub(m, 1, sp - 1), string.sub(m, sp + 1)
    local user = redis.call('HGET', prefix .. ':doc:' .. doc .. ':conns', conn)
    if user then
      apply(prefix, doc, 'L', conn, user, '', '', left_payload(conn, user), origin,
            max_members, max_stored, ttl)
      done = done + 1
    end
  end
  local left = redis.call('SCARD', kinst)
  return {done, left}
end
"""

# ARGV: prefix, origin, max_members, max_stored, ttl_ms, first, then 7 per event:
# doc, etype, conn, user, kind, frame, payload. Returns the seqs. ``first`` (or
# '') numbers the events: their envelopes' origin is "ORIGIN#N", N = first,
# first + 1, ... (the instance tells which of its events came back).
COMMIT: Final = (
    _PRELUDE
    + r"""
local prefix, origin = ARGV[1], ARGV[2]
local max_members, max_stored, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local first = tonumber(ARGV[6])
local seqs = {}
local o = origin
for i = 7, #ARGV, 7 do
  if first then o = origin .. '#' .. (first + #seqs) end
  seqs[#seqs + 1] = apply(prefix, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
                          ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], o,
                          max_members, max_stored, ttl)
end
return seqs
"""
)

# ARGV: prefix, doc. Returns {seq, conns (flat), users (join order), pres (flat), stored}.
LOAD: Final = r"""
local b = ARGV[1] .. ':doc:' .. ARGV[2]
return {
  tonumber(redis.call('GET', b .. ':seq') or '0'),
  redis.call('HGETALL', b .. ':conns'),
  redis.call('ZRANGE', b .. ':users', 0, -1),
  redis.call('HGETALL', b .. ':pres'),
  redis.call('LRANGE', b .. ':stored', 0, -1),
}
"""

# ARGV: prefix, dead instance, origin, max_members, max_stored, ttl_ms, batch.
# Returns {reaped, remaining}, or {-1, 0} when the instance is alive after all.
REAP: Final = (
    _PRELUDE
    + r"""
local prefix, dead = ARGV[1], ARGV[2]
if redis.call('EXISTS', prefix .. ':alive:' .. dead) == 1 then return {-1, 0} end
local r = reap(prefix, dead, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
               tonumber(ARGV[6]), tonumber(ARGV[7]))
if r[2] == 0 then
  redis.call('SREM', prefix .. ':instances', dead)
  redis.call('DEL', prefix .. ':inst:' .. dead)
end
return r
"""
)

# ARGV: prefix, instance, timeout_ms, ttl_ms.
# Refreshes this instance's liveness; returns {was_alive, dead instance ids...}.
HEARTBEAT: Final = r"""
local prefix, me = ARGV[1], ARGV[2]
local was = redis.call('SET', prefix .. ':alive:' .. me, '1', 'PX', ARGV[3], 'GET')
redis.call('SADD', prefix .. ':instances', me)
redis.call('PEXPIRE', prefix .. ':instances', ARGV[4])
redis.call('PEXPIRE', prefix .. ':inst:' .. me, ARGV[4])
local out = {was and 1 or 0}
for _, other in ipairs(redis.call('SMEMBERS', prefix .. ':instances')) do
  if other ~= me and redis.call('EXISTS', prefix .. ':alive:' .. other) == 0 then
    out[#out + 1] = other
  end
end
redis.call('PUBLISH', prefix .. ':ctl:' .. me, 'beat')
return out
"""

# ARGV: prefix, instance, origin, max_members, max_stored, ttl_ms, then triples
# doc, conn, user: what this instance holds. Memberships of this instance that
# Redis has and the triples lack get a Left; triples Redis lacks get a Joined.
# Returns the "doc conn" pairs joined here (their presence must be re-published).
SYNC: Final = (
    _PRELUDE
    + r"""
local prefix, me, origin = ARGV[1], ARGV[2], ARGV[3]
local max_members, max_stored, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local kinst = prefix .. ':inst:' .. me
local want = {}
for i = 7, #ARGV, 3 do want[ARGV[i] .. ' ' .. ARGV[i + 1]] = ARGV[i + 2] end
for _, m in ipairs(redis.call('SMEMBERS', kinst)) do
  if want[m] == nil then
    local sp = string.find(m, ' ', 1, true)
    local doc, conn = string.sub(m, 1, sp - 1), string.sub(m, sp + 1)
    local user = redis.call('HGET', prefix .. ':doc:' .. doc .. ':conns', conn)
    if user then
      apply(prefix, doc, 'L', conn, user, '', '', left_payload(conn, user), origin,
            max_members, max_stored, ttl)
    else
      redis.call('SREM', kinst, m)
    end
  end
end
local joined = {}
for i = 7, #ARGV, 3 do
  local doc, conn, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local conns = prefix .. ':doc:' .. doc .. ':conns'
  if redis.call('HGET', conns, conn) ~= user then
    local payload = string.char(0x93) .. mp_str('J') .. mp_str(conn) .. mp_str(user)
    apply(prefix, doc, 'J', conn, user, '', '', payload, origin, max_members, max_stored, ttl)
    if redis.call('HGET', conns, conn) == user then joined[#joined + 1] = doc .. ' ' .. conn end
  end
end
return joined
"""
)

# ARGV: prefix, instance. Leaves nothing of this instance behind (after drain).
RETIRE: Final = (
    _PRELUDE
    + r"""
local prefix, me = ARGV[1], ARGV[2]
redis.call('DEL', prefix .. ':alive:' .. me)
local r = reap(prefix, me, me, 1000000000, tonumber(ARGV[3]), tonumber(ARGV[4]), 1000000000)
redis.call('SREM', prefix .. ':instances', me)
redis.call('DEL', prefix .. ':inst:' .. me)
return r[1]
"""
)

# ARGV: prefix, ttl_ms, docs...: keep the keys of documents with members alive.
TOUCH: Final = r"""
local prefix, ttl = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local b = prefix .. ':doc:' .. ARGV[i]
  for _, s in ipairs({':seq', ':conns', ':ucount', ':users', ':pres', ':stored'}) do
    redis.call('PEXPIRE', b .. s, ttl)
  end
end
return #ARGV - 2
"""
