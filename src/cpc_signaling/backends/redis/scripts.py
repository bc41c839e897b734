"""The Lua scripts: every write to a node's shared state is one script, atomic.

``FLUSH`` applies a batch of one instance's events, for any number of
documents, to the canonical state, gives each document a range of sequence
numbers, and publishes ONE message to each *other* instance following a
document it touched (``wire.Batch``); the sending instance gets its events'
numbers and outcomes in the reply. ``group`` mirrors
``core.state.DocumentState.apply`` exactly (``tests/backends`` checks it
against the Python reference), deciding the outcomes every replica then follows.

Events arrive packed (msgpack, as ``core.events`` encodes them), with the
fields the script reads beside them, and go out as they came. A document's hot
state is ONE hash, so that a flush costs one read (HMGET) and one write (HSET)
per document however many presence messages it carries.

Keys (``P`` = prefix, ``D`` = document id, ``I`` = instance id; every key of a
document lives on the node the document hashes to)::

    P:doc:D            hash  s: the last sequence number given
                             f: instances following D, space-separated (their
                                inbox gets its events)
                             n: member connections
                             c:CONN -> user id (members)
                             u:USER -> number of the user's connections
                             i:USER -> the user's info (canonical JSON), if any
                             p:CONN KIND -> "SEQ EVENT": the connection's latest
                                presence message of that kind (the packed
                                Relayed that set it, and its seq)
                             sn: stored messages ever appended (the absolute
                                index of the next), sb: bytes in the list
    P:doc:D:users      zset  user id, scored by the seq of its first join (join order)
    P:doc:D:stored     list  Annotation/Comment frames, oldest first, within the budgets
    P:alive:I          string, expires: I's registration token (fencing)
    P:inst:I           set   "D CONN" for every membership held by instance I
    P:follows:I        set   documents I follows
    P:flushed:I        string "TOKEN N": the last flush of I that ran
    P:instances        set   instance ids that may hold memberships
    P:limits           hash  instance -> its limits (to warn when they differ)

Channels carry the database number (pub/sub ignores it): ``P:dbN:inbox:I``
(instance I's inbox), ``P:dbN:control`` (orders to every instance).
"""

from __future__ import annotations

from typing import Final

_BASE: Final = r"""
local P, CH = ARGV[1], ARGV[2]
local char, floor, concat, byte, sub = string.char, math.floor, table.concat, string.byte,
                                       string.sub
"""

# name: (what it needs, its Lua); a script gets only what it uses (each local
# function is a closure built on every call of the script).
_HELPERS: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "tables": (
        (),
        r"""
local STORED = {Annotation=true, Comment=true}
local KINDS = {'PresenceUpdate', 'CursorUpdate', 'SelectionUpdate', 'TypingIndicator',
               'PresenceStatus'}
local SUPERSEDED = {PresenceUpdate={'CursorUpdate', 'SelectionUpdate', 'TypingIndicator'}}
""",
    ),
    "be32": (
        (),
        r"""
local function be32(n)
  return char(floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256)
end
""",
    ),
    "mp_str": (
        ("be32",),
        r"""
local function mp_str(s)
  local n = #s
  if n < 32 then return char(0xa0 + n) .. s end
  if n < 256 then return char(0xd9, n) .. s end
  if n < 65536 then return char(0xda, floor(n / 256), n % 256) .. s end
  return char(0xdb) .. be32(n) .. s
end
""",
    ),
    "mp_int": (
        ("be32",),
        r"""
local function mp_int(n)
  if n < 0 then return '\255' end  -- -1 is the only negative sent
  if n < 128 then return char(n) end
  if n < 256 then return char(0xcc, n) end
  if n < 65536 then return char(0xcd, floor(n / 256), n % 256) end
  if n < 4294967296 then return char(0xce) .. be32(n) end
  return char(0xcf) .. be32(floor(n / 4294967296)) .. be32(n % 4294967296)
end
""",
    ),
    "mp_arr": (
        ("be32",),
        r"""
local function mp_arr(n)
  if n < 16 then return char(0x90 + n) end
  if n < 65536 then return char(0xdc, floor(n / 256), n % 256) end
  return char(0xdd) .. be32(n)
end
""",
    ),
    "frame_of": (
        (),
        r"""
-- The frame of a packed Relayed: ["R", conn, user, kind, bin frame].
local function frame_of(packed)
  local at = 2
  for _ = 1, 4 do
    local b = byte(packed, at)
    if b < 0xc0 then at = at + 1 + b - 0xa0
    elseif b == 0xd9 then at = at + 2 + byte(packed, at + 1)
    elseif b == 0xda then at = at + 3 + byte(packed, at + 1) * 256 + byte(packed, at + 2)
    else at = at + 5 + ((byte(packed, at + 1) * 256 + byte(packed, at + 2)) * 256
                        + byte(packed, at + 3)) * 256 + byte(packed, at + 4) end
  end
  local b = byte(packed, at)
  if b == 0xc4 then return sub(packed, at + 2) end
  if b == 0xc5 then return sub(packed, at + 3) end
  return sub(packed, at + 5)
end
""",
    ),
    "instance_of": (
        (),
        r"""
local function instance_of(conn)
  return string.match(conn, '^(.*)/') or ''
end
""",
    ),
    "deliver": (
        ("mp_str", "mp_arr"),
        r"""
-- Messages to instances, built while the script runs and published at its end.
local out, order = {}, {}
local function deliver(inst, block)
  local o = out[inst]
  if o == nil then
    o = {}
    out[inst] = o
    order[#order + 1] = inst
  end
  o[#o + 1] = block
end

local function publish(origin, internal)
  local head = '\148\161F' .. mp_str(origin) .. (internal and '\195' or '\194')
  for _, inst in ipairs(order) do
    local o = out[inst]
    redis.call('PUBLISH', CH .. ':inbox:' .. inst, head .. mp_arr(#o) .. concat(o))
  end
end
""",
    ),
    "write": (
        (),
        r"""
-- Write hash fields: `put` field -> value, `gone` field -> true (deleted).
local function write(key, put, gone)
  local args, dels = {}, {}
  for f, v in pairs(put) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  for f in pairs(gone) do dels[#dels + 1] = f end
  for s = 1, #args, 400 do redis.call('HSET', key, unpack(args, s, math.min(s + 399, #args))) end
  for s = 1, #dels, 400 do redis.call('HDEL', key, unpack(dels, s, math.min(s + 399, #dels))) end
end
""",
    ),
    "store": (
        (),
        r"""
-- Append a stored message, then drop the oldest while over a budget (count or
-- bytes). `sm` = {appended ever, bytes}. Returns the absolute index of the
-- oldest message kept.
local stored_any = false
local function store(key, sm, frame, L)
  stored_any = true
  local kstored = key .. ':stored'
  local len = redis.call('RPUSH', kstored, frame)
  sm[1] = math.max(sm[1] + 1, len)
  sm[2] = sm[2] + #frame
  while len > 0 and (len > L.max_stored or sm[2] > L.max_bytes) do
    sm[2] = sm[2] - #redis.call('LPOP', kstored)
    len = len - 1
  end
  if len == 0 then sm[2] = 0 end
  return sm[1] - len
end
""",
    ),
    "group": (
        (
            "tables",
            "mp_str",
            "mp_int",
            "mp_arr",
            "frame_of",
            "instance_of",
            "deliver",
            "write",
            "store",
        ),
        r"""
-- Apply n events of document `doc`, flat in `src` from index i (4 fields each:
-- conn, user, kind (a join: its user info), packed event; its type is the packed
-- tag: R, J or L), with consecutive sequence numbers.
-- Every follower gets them (the origin only when `ack` is false). Returns the
-- ack block for the origin: msgpack [first_seq, [decided...]].
local function group(doc, src, i, n, origin, ack, L, to_origin)
  local key = P .. ':doc:' .. doc
  local fields, at = {'s', 'f'}, {}
  local k = i
  for _ = 1, n do
    local conn = src[k]
    if conn ~= '' and at[conn] == nil then
      fields[#fields + 1] = 'c:' .. conn
      at[conn] = #fields
    end
    k = k + 4
  end
  local got = redis.call('HMGET', key, unpack(fields))
  local first = (tonumber(got[1]) or 0) + 1
  local touched = got[1] == false  -- a new document: its keys get their TTL
  local member = {}
  for conn, x in pairs(at) do member[conn] = got[x] end
  local put, gone = {}, {}
  local evs, dec = {}, {}
  local count, ucount, sm
  for j = 1, n do
    local conn, user, kind, packed = src[i], src[i + 1], src[i + 2], src[i + 3]
    local t = byte(packed, 3)  -- 82 R(elayed), 74 J(oined), 76 L(eft)
    i = i + 4
    local d = 0
    if t == 82 then
      local ok
      if conn == '' then
        ok = STORED[kind] == true  -- from the server's API: stored kinds only
      else
        ok = member[conn] == user
      end
      if STORED[kind] then
        d = -1
        if ok then
          if sm == nil then
            local r = redis.call('HMGET', key, 'sn', 'sb')
            sm = {tonumber(r[1]) or 0, tonumber(r[2]) or 0}
          end
          d = store(key, sm, frame_of(packed), L)
          touched = true
        end
      elseif ok then
        -- Presence belongs to the connection. Only the final value per
        -- (connection, kind) is written, at the end.
        local base = 'p:' .. conn .. ' '
        local sup = SUPERSEDED[kind]
        if sup then
          for s = 1, #sup do
            put[base .. sup[s]] = nil
            gone[base .. sup[s]] = true
          end
        end
        put[base .. kind] = (first + j - 1) .. ' ' .. packed
        gone[base .. kind] = nil
      end
    elseif t == 74 then
      touched = true
      d = 3  -- a member already: a repeated join
      if not member[conn] then
        d = 0  -- another connection of a present user
        if count == nil then count = tonumber(redis.call('HGET', key, 'n')) or 0 end
        if count < L.max_members then
          count = count + 1
          member[conn] = user
          put['c:' .. conn] = user
          gone['c:' .. conn] = nil
          ucount = ucount or {}
          local u = ucount[user] or tonumber(redis.call('HGET', key, 'u:' .. user)) or 0
          ucount[user] = u + 1
          put['u:' .. user] = u + 1
          gone['u:' .. user] = nil
          if u == 0 then
            d = 2  -- the user's first connection: a user-level join
            redis.call('ZADD', key .. ':users', first + j - 1, user)
            if kind ~= '' then  -- a join's info rides in the kind field
              put['i:' .. user] = kind
              gone['i:' .. user] = nil
            end
          end
          local kinst = P .. ':inst:' .. instance_of(conn)
          redis.call('SADD', kinst, doc .. ' ' .. conn)
          redis.call('PEXPIRE', kinst, L.ttl)
        else
          d = 1
        end
      end
    else
      touched = true
      local owner = member[conn]
      redis.call('SREM', P .. ':inst:' .. instance_of(conn), doc .. ' ' .. conn)
      d = -1  -- not a member: nothing to do
      if owner then
        d = 0
        if owner ~= user then
          user = owner  -- a leave from the engine (re-registration) names no user
          packed = '\147\161L' .. mp_str(conn) .. mp_str(user)
        end
        member[conn] = false
        put['c:' .. conn] = nil
        gone['c:' .. conn] = true
        for s = 1, #KINDS do  -- what the connection set goes with it
          put['p:' .. conn .. ' ' .. KINDS[s]] = nil
          gone['p:' .. conn .. ' ' .. KINDS[s]] = true
        end
        if count == nil then count = tonumber(redis.call('HGET', key, 'n')) or 0 end
        count = count - 1
        ucount = ucount or {}
        local u = (ucount[owner] or tonumber(redis.call('HGET', key, 'u:' .. owner)) or 0) - 1
        ucount[owner] = u
        if u <= 0 then
          d = 1  -- the user's last connection: a user-level leave
          for _, f in ipairs({'u:' .. owner, 'i:' .. owner}) do
            put[f] = nil
            gone[f] = true
          end
          redis.call('ZREM', key .. ':users', owner)
        else
          put['u:' .. owner] = u
          gone['u:' .. owner] = nil
        end
      end
    end
    evs[j] = packed
    dec[j] = mp_int(d)
  end
  put.s = first + n - 1
  if count ~= nil then put.n = count end
  if sm ~= nil then
    put.sn = sm[1]
    put.sb = sm[2]
  end
  write(key, put, gone)
  if touched then
    redis.call('PEXPIRE', key, L.ttl)
    redis.call('PEXPIRE', key .. ':users', L.ttl)
    redis.call('PEXPIRE', key .. ':stored', L.ttl)
  end
  local head, decs = mp_int(first), mp_arr(n) .. concat(dec)
  local full
  for f in string.gmatch(got[2] or '', '%S+') do
    if f ~= origin or not ack then
      if full == nil then
        full = '\148' .. mp_str(doc) .. head .. mp_arr(n) .. concat(evs) .. decs
      end
      deliver(f, full)
      if f == origin then to_origin = false end
    end
  end
  if to_origin then  -- its own events (a reap), whether it follows the document or not
    deliver(origin, full or ('\148' .. mp_str(doc) .. head .. mp_arr(n) .. concat(evs) .. decs))
  end
  return '\146' .. head .. decs
end
""",
    ),
    "limits": (
        (),
        r"""
local function limits(a)
  return {max_members = tonumber(ARGV[a]), max_stored = tonumber(ARGV[a + 1]),
          max_bytes = tonumber(ARGV[a + 2]), ttl = tonumber(ARGV[a + 3])}
end
""",
    ),
    "follow": (
        (),
        r"""
-- Followers of a document (the "f" field) without / with `inst`.
local function unfollow(doc, inst)
  local key = P .. ':doc:' .. doc
  local kept = {}
  for f in string.gmatch(redis.call('HGET', key, 'f') or '', '%S+') do
    if f ~= inst then kept[#kept + 1] = f end
  end
  if #kept == 0 then
    redis.call('HDEL', key, 'f')
  else
    redis.call('HSET', key, 'f', concat(kept, ' '))
  end
end

local function follow(doc, inst, ttl)
  local key = P .. ':doc:' .. doc
  local fol = redis.call('HGET', key, 'f') or ''
  for f in string.gmatch(fol, '%S+') do
    if f == inst then return end
  end
  redis.call('HSET', key, 'f', fol == '' and inst or fol .. ' ' .. inst)
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
end
""",
    ),
    "reap": (
        ("group", "mp_str", "follow", "deliver"),
        r"""
-- Leave every membership of instance `dead` (at most `batch`), then stop it
-- following documents; origin `reaper`. Returns {done, remaining}.
local function reap(dead, reaper, L, batch)
  local kinst, kfollows = P .. ':inst:' .. dead, P .. ':follows:' .. dead
  local by_doc, docs, done = {}, {}, 0
  for _, m in ipairs(redis.call('SPOP', kinst, batch)) do
    local sp = string.find(m, ' ', 1, true)
    if sp then
      local doc, conn = sub(m, 1, sp - 1), sub(m, sp + 1)
      local user = redis.call('HGET', P .. ':doc:' .. doc, 'c:' .. conn)
      if user then
        local flat = by_doc[doc]
        if flat == nil then
          flat = {}
          by_doc[doc] = flat
          docs[#docs + 1] = doc
        end
        local packed = '\147\161L' .. mp_str(conn) .. mp_str(user)
        for _, v in ipairs({conn, user, '', packed}) do flat[#flat + 1] = v end
        done = done + 1
      end
    end
  end
  for _, doc in ipairs(docs) do
    group(doc, by_doc[doc], 1, #by_doc[doc] / 4, reaper, false, L, true)
  end
  local left = redis.call('SCARD', kinst)
  if left == 0 then
    for _, doc in ipairs(redis.call('SPOP', kfollows, batch)) do unfollow(doc, dead) end
    left = redis.call('SCARD', kfollows)
    if left == 0 then
      redis.call('DEL', kinst, kfollows, P .. ':flushed:' .. dead)
      redis.call('SREM', P .. ':instances', dead)
      redis.call('HDEL', P .. ':limits', dead)
    end
  end
  publish(reaper, false)
  return {done, left}
end
""",
    ),
    "load": (
        (),
        r"""
-- A document's state at this point (the snapshot boundary), with at most about
-- `page` bytes of its stored messages (the rest: STORED). Returns {seq, hash
-- (flat), users (join order), head, tail, stored...}: head and tail are the absolute
-- indices of the first stored message and past the last.
local function load(doc, page)
  local key = P .. ':doc:' .. doc
  local kstored = key .. ':stored'
  local len = redis.call('LLEN', kstored)
  local sm = redis.call('HMGET', key, 'sn', 'sb')
  local total = math.max(tonumber(sm[1]) or 0, len)
  local bytes = tonumber(sm[2]) or 0
  local count = len
  if bytes > page and len > 1 then count = math.max(1, floor(len * page / bytes)) end
  local stored = {}
  if count > 0 then stored = redis.call('LRANGE', kstored, 0, count - 1) end
  return {tonumber(redis.call('HGET', key, 's')) or 0, redis.call('HGETALL', key),
          redis.call('ZRANGE', key .. ':users', 0, -1), total - len, total, stored}
end
""",
    ),
}


def _script(body: str, *uses: str) -> str:
    """A script: the base, the helpers ``uses`` needs (in dependency order), ``body``."""
    wanted: set[str] = set()

    def want(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for need in _HELPERS[name][0]:
                want(need)

    for name in uses:
        want(name)
    parts = [_BASE] + [source for name, (_, source) in _HELPERS.items() if name in wanted]
    return "\n".join([*parts, body])


# ARGV: P, CH, I, token, flush number, mode ('A': the origin gets acks, others the
# events; 'S': everyone, the origin too, gets the events, marked internal),
# max_members, max_stored, max_bytes, ttl_ms; then per document: doc, n, and n x
# (conn, user, kind, packed event). Returns {0} when the token is not I's current
# one (fenced: nothing was done), else {1, msgpack [[first, [decided...]]...]}.
# A flush that stored a message records its number (P:flushed:I): after a lost
# connection, the instance knows which of its annotations and comments Redis has.
FLUSH: Final = _script(
    r"""
local me, token = ARGV[3], ARGV[4]
if redis.call('GET', P .. ':alive:' .. me) ~= token then return {0} end
local ack, L = ARGV[6] == 'A', limits(7)
local acks, i = {}, 11
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  acks[#acks + 1] = group(ARGV[i], ARGV, i + 2, n, me, ack, L)
  i = i + 2 + 4 * n
end
if stored_any then
  redis.call('SET', P .. ':flushed:' .. me, token .. ' ' .. ARGV[5], 'PX', L.ttl)
end
publish(me, not ack)
return {1, mp_arr(#acks) .. concat(acks)}
""",
    "group",
    "limits",
)

# ARGV: P, CH, reaper, dead, max_members, max_stored, max_bytes, ttl_ms, batch.
# Returns {reaped, remaining}, or {-1, 0} when the instance is alive after all.
REAP: Final = _script(
    r"""
if redis.call('EXISTS', P .. ':alive:' .. ARGV[4]) == 1 then return {-1, 0} end
return reap(ARGV[4], ARGV[3], limits(5), tonumber(ARGV[9]))
""",
    "reap",
    "limits",
)

# ARGV: P, CH, I, token, max_members, max_stored, max_bytes, ttl_ms, batch.
# This instance retires (after its drain): nothing of it stays behind.
RETIRE: Final = _script(
    r"""
local ka = P .. ':alive:' .. ARGV[3]
if redis.call('GET', ka) == ARGV[4] then redis.call('DEL', ka) end
if redis.call('EXISTS', ka) == 1 then return {-1, 0} end
return reap(ARGV[3], ARGV[3], limits(5), tonumber(ARGV[9]))
""",
    "reap",
    "limits",
)

# ARGV: P, CH, I, token, timeout_ms, ttl_ms. Refreshes I's registration if the
# token is still its own: {1, dead instance ids...}; else {0} (never re-created:
# an instance that was declared dead must re-register).
HEARTBEAT: Final = _script(
    r"""
local me, ka = ARGV[3], P .. ':alive:' .. ARGV[3]
if redis.call('GET', ka) ~= ARGV[4] then return {0} end
redis.call('PEXPIRE', ka, ARGV[5])
redis.call('SADD', P .. ':instances', me)
for _, k in ipairs({':instances', ':limits', ':inst:' .. me, ':follows:' .. me,
                    ':flushed:' .. me}) do
  redis.call('PEXPIRE', P .. k, ARGV[6])
end
local out = {1}
for _, other in ipairs(redis.call('SMEMBERS', P .. ':instances')) do
  if other ~= me and redis.call('EXISTS', P .. ':alive:' .. other) == 0 then
    out[#out + 1] = other
  end
end
return out
"""
)

# ARGV: P, CH, I, new token, old token ('' at start), timeout_ms, ttl_ms, limits.
# Registers I with a new token unless another registration holds the id:
# {1, "TOKEN N" of its last flush or '', limits (flat)} or {0}.
REGISTER: Final = _script(
    r"""
local me, ka = ARGV[3], P .. ':alive:' .. ARGV[3]
local current = redis.call('GET', ka)
if current and current ~= ARGV[5] then return {0} end
redis.call('SET', ka, ARGV[4], 'PX', ARGV[6])
redis.call('SADD', P .. ':instances', me)
redis.call('PEXPIRE', P .. ':instances', ARGV[7])
redis.call('HSET', P .. ':limits', me, ARGV[8])
redis.call('PEXPIRE', P .. ':limits', ARGV[7])
return {1, redis.call('GET', P .. ':flushed:' .. me) or '',
        redis.call('HGETALL', P .. ':limits')}
"""
)

# ARGV: P, CH, I, doc, ttl_ms, page bytes. I follows doc from now on: every
# later event of it reaches I's inbox, every earlier one is in the state
# returned (as LOAD).
ATTACH: Final = _script(
    r"""
local me, doc = ARGV[3], ARGV[4]
follow(doc, me, ARGV[5])
local kfollows = P .. ':follows:' .. me
redis.call('SADD', kfollows, doc)
redis.call('PEXPIRE', kfollows, ARGV[5])
return load(doc, tonumber(ARGV[6]))
""",
    "follow",
    "load",
)

# ARGV: P, CH, I, docs...: I stops following them.
DETACH: Final = _script(
    r"""
local me = ARGV[3]
for i = 4, #ARGV do
  unfollow(ARGV[i], me)
  redis.call('SREM', P .. ':follows:' .. me, ARGV[i])
end
return #ARGV - 3
""",
    "follow",
)

# ARGV: P, CH, doc, page bytes. A document's state, following nothing (see load).
LOAD: Final = _script(
    r"""
return load(ARGV[3], tonumber(ARGV[4]))
""",
    "load",
)

# ARGV: P, CH, doc, from, to, page bytes: stored messages with absolute indices
# from `from` (or the oldest kept, if later) up to `to` (exclusive), about `page`
# bytes of them. Returns {head, messages...}.
STORED: Final = _script(
    r"""
local key = P .. ':doc:' .. ARGV[3]
local kstored = key .. ':stored'
local len = redis.call('LLEN', kstored)
local sm = redis.call('HMGET', key, 'sn', 'sb')
local total = math.max(tonumber(sm[1]) or 0, len)
local head = total - len
local from, to = math.max(tonumber(ARGV[4]), head), math.min(tonumber(ARGV[5]), total)
if from >= to then return {head} end
local page, bytes = tonumber(ARGV[6]), tonumber(sm[2]) or 0
local count = to - from
if bytes > 0 and len > 0 then
  count = math.min(count, math.max(1, floor(page * len / bytes)))
end
local out = redis.call('LRANGE', kstored, from - head, from - head + count - 1)
table.insert(out, 1, head)
return out
"""
)

# ARGV: P, CH, ttl_ms, docs...: keep the keys of followed documents alive.
TOUCH: Final = _script(
    r"""
for i = 4, #ARGV do
  local key = P .. ':doc:' .. ARGV[i]
  for _, k in ipairs({key, key .. ':users', key .. ':stored'}) do
    redis.call('PEXPIRE', k, ARGV[3])
  end
end
return #ARGV - 3
"""
)

# ARGV: P, CH, key, cursor, count: one SSCAN step of a set key named by suffix
# (``inst:I`` or ``follows:I``). Returns {cursor, members...}.
SCAN: Final = _script(
    r"""
local r = redis.call('SSCAN', P .. ':' .. ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {r[1]}
for _, m in ipairs(r[2]) do out[#out + 1] = m end
return out
"""
)

SCRIPTS: Final = {
    "flush": FLUSH,
    "reap": REAP,
    "retire": RETIRE,
    "heartbeat": HEARTBEAT,
    "register": REGISTER,
    "attach": ATTACH,
    "detach": DETACH,
    "load": LOAD,
    "stored": STORED,
    "touch": TOUCH,
    "scan": SCAN,
}
