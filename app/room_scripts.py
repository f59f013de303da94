"""The Redis engine's Lua scripts and keys: what runs inside Redis, in one round trip each.

Each room's keys share one hash tag, ``{<room>}``, so a room sits on one shard (and one Redis
Cluster slot). A room's order and history: ``meta`` (a hash: ``e`` epoch, ``r`` the run id of
the Redis that made it, ``o`` last offset, ``b`` bytes in the log), ``log`` (a stream, entry id
``<offset>-0``), and the pubsub channel. Its presence: ``conns``, ``names`` and ``users``.
"""

from __future__ import annotations

#: The room's epoch (KEYS: meta, log): made, with an empty log, when Redis has none or when
#: another Redis server made it (NEW: the argument holding a fresh epoch).
EPOCH = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or redis.call('HGET', KEYS[1], 'r') ~= run then
  epoch = NEW
  redis.call('HSET', KEYS[1], 'e', epoch, 'r', run, 'o', 0, 'b', 0)
  redis.call('DEL', KEYS[2])
end
"""

#: KEYS: meta, log. ARGV: pubsub channel, an epoch for a new room, payload, size, bytes, TTL,
#: meta TTL. The room's epoch is made here, with an empty log, if Redis has none (a new room, or
#: a Redis that lost it) or if another Redis server made it (``r``, the server's run id): after a
#: failover the new master holds only what reached it, and going on under the old epoch would
#: hand out again offsets the old master gave to other messages. The offset is the meta's ``o``
#: plus one; the log holds ``p``ayload and ``t``ime, trimmed to the size and bytes; then the
#: PUBLISH. One script: a message is in the history before any member can see it, and offsets
#: are consecutive.
PUBLISH = (
    EPOCH.replace("NEW", "ARGV[2]")
    + """
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local size, max_bytes, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if size > 0 and max_bytes > 0 and ttl > 0 then
  if redis.call('XLEN', KEYS[2]) == 0 then redis.call('HSET', KEYS[1], 'b', 0) end
  redis.call('XADD', KEYS[2], offset .. '-0', 't', redis.call('TIME')[1], 'p', ARGV[3])
  local held = redis.call('HINCRBY', KEYS[1], 'b', #ARGV[3])
  local n = redis.call('XLEN', KEYS[2])
  while n > size or (held > max_bytes and n > 1) do
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[2], first[1])
    held = redis.call('HINCRBY', KEYS[1], 'b', -#first[2][4])
    n = n - 1
  end
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[3])
return {epoch, offset}
"""
)

#: KEYS: meta, log. ARGV: an epoch for a new room, meta TTL. The room's epoch and last offset.
POSITION = (
    EPOCH.replace("NEW", "ARGV[1]")
    + """
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {epoch, redis.call('HGET', KEYS[1], 'o') or 0}
"""
)

#: Presence, per room: ``conns`` (a sorted set of ``<process>|<name>``, scored by the time by
#: which its process must renew it), ``names`` (a hash: each member name's count of processes),
#: ``users`` (each name's user, "" for none), ``seq`` (the number of the last join or leave
#: frame). LEAVE is shared: an entry removed, its name counted down, and at zero the ``leave``
#: frame PUBLISHed (``!<seq>:`` and the frame) while the room is within ARGV[1] members. A
#: joining member is told frames numbered after its snapshot's ``seq`` only: one published
#: before its snapshot can reach its process after it registered. KEYS: conns, names, users,
#: seq.
LEAVE = """
local function leave(entry, channel, events)
  if redis.call('ZREM', KEYS[1], entry) == 0 then return end
  local name = string.sub(entry, string.find(entry, '|', 1, true) + 1)
  if redis.call('HINCRBY', KEYS[2], name, -1) > 0 then return end
  local user = redis.call('HGET', KEYS[3], name)
  redis.call('HDEL', KEYS[2], name)
  redis.call('HDEL', KEYS[3], name)
  if redis.call('HLEN', KEYS[2]) < events then
    user = (user and user ~= '') and cjson.encode(user) or 'null'
    redis.call('PUBLISH', channel, '!' .. redis.call('INCR', KEYS[4])
      .. ':{"type":"leave","member":{"member":' .. cjson.encode(name) .. ',"user":' .. user .. '}}')
  end
end
local function reap(now, channel, events)
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
    leave(entry, channel, events)
  end
end
"""

#: The count of names and the first ``size`` of them with their users (KEYS: conns, names,
#: users).
LIST = """
local function list(size)
  local names = {}
  local scan = redis.call('HSCAN', KEYS[2], 0, 'COUNT', size)[2]
  for i = 1, #scan, 2 do
    if #names < size then names[#names + 1] = scan[i] end
  end
  local users = #names > 0 and redis.call('HMGET', KEYS[3], unpack(names)) or {}
  return {redis.call('HLEN', KEYS[2]), names, users}
end
"""

#: ARGV: events max, pubsub channel, now, entry, name, user, deadline, list size, join frame,
#: TTL. Reaps the entries their processes stopped renewing, adds this one (a name new to the
#: room is announced), and returns the count, the first names with their users, and ``seq``.
ARRIVE = (
    LEAVE
    + LIST
    + """
local events = tonumber(ARGV[1])
reap(ARGV[3], ARGV[2], events)
if redis.call('ZADD', KEYS[1], ARGV[7], ARGV[4]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
  if redis.call('HINCRBY', KEYS[2], ARGV[5], 1) == 1 and redis.call('HLEN', KEYS[2]) <= events then
    redis.call('PUBLISH', ARGV[2], '!' .. redis.call('INCR', KEYS[4]) .. ':' .. ARGV[9])
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[10]) end
local answer = list(tonumber(ARGV[8]))
answer[4] = tonumber(redis.call('GET', KEYS[4]) or 0)
return answer
"""
)

#: ARGV: events max, pubsub channel, now, list size. Who is in the room (for
#: ``GET /rooms/<room>/presence``), once the entries past their deadline are reaped.
PRESENCE = (
    LEAVE
    + LIST
    + """
reap(ARGV[3], ARGV[2], tonumber(ARGV[1]))
return list(tonumber(ARGV[4]))
"""
)

#: ARGV: events max, pubsub channel, entry. The last connection of a name in a process.
DEPART = LEAVE + "leave(ARGV[3], ARGV[2], tonumber(ARGV[1]))"

#: ARGV: events max, pubsub channel, now, TTL, then deadline and entry pairs: renews this
#: process's entries and reaps the ones nobody renewed (a process that died without a word).
#: Renews only (``XX``): an entry whose ARRIVE has not run yet must be added by ARRIVE, which
#: counts it (a renewal that went first left a member uncounted: bench/presence.py found it).
RENEW = (
    LEAVE
    + """
for i = 5, #ARGV, 2 do redis.call('ZADD', KEYS[1], 'XX', ARGV[i], ARGV[i + 1]) end
reap(ARGV[3], ARGV[2], tonumber(ARGV[1]))
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
"""
)

#: How long a room's epoch and offset outlive its last message: a week. Past it, the room
#: starts again on a new epoch (its history, ``ROOM_HISTORY_TTL``, went long before).
META_TTL = 7 * 24 * 3600


def presence_keys(room: str) -> list[str]:
    """The room's presence: ``conns``, ``names``, ``users``, ``seq`` (``LEAVE``), on the room's
    shard."""
    tag = f"rooms:{{{room}}}"
    return [f"{tag}:conns", f"{tag}:names", f"{tag}:users", f"{tag}:seq"]


def keys(room: str) -> tuple[str, str, str]:
    """The room's meta hash, log stream and pubsub channel: one hash tag, so one shard."""
    return f"rooms:{{{room}}}:meta", f"rooms:{{{room}}}:log", f"rooms:{{{room}}}"
