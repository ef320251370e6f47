"""The Lua scripts of the Redis store: each is one atomic round trip.

Values they handle (see :mod:`cacheproxy.store.redis` for the why):

* the epoch: 16 hex characters, renewed by ``clear`` and whenever the server
  behind the connection changes (restart, failover);
* a generation value: ``<epoch>:<R>`` where ``R`` is a random 62-bit number in
  decimal chosen by the client; a value of an older epoch counts as missing;
* an entry value: ``<epoch><id><encoded entry>`` (16 + 16 bytes of header).

Scripts declare every key they touch in ``KEYS`` and never compute key names,
so they stay valid for ACLs restricted to the prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


GENERATIONS = Script(
    "generations",
    """
-- KEYS[1] epoch, KEYS[2..] generation keys
-- ARGV[1] epoch candidate, ARGV[2] generation ttl (ms), ARGV[3..] value candidates
-- Returns {epoch, value...}.  A generation that is missing (never bumped,
-- expired, evicted) or of an older epoch gets a fresh random value: it can
-- never come back to a value an entry captured before, whatever was evicted.
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[1]
  redis.call('SET', KEYS[1], e)
end
local head = e .. ':'
local out = {e}
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if (not v) or string.sub(v, 1, #head) ~= head then
    v = head .. ARGV[i + 1]
    redis.call('SET', KEYS[i], v, 'PX', ARGV[2])
  end
  out[i] = v
end
return out
""",
)

PROBE = Script(
    "probe",
    """
-- KEYS[1] epoch, KEYS[2..n-2] generation keys, KEYS[n-1] entry,
-- KEYS[n] acceptance (n = #KEYS: what varies per call comes last, so the
-- client packs the rest once per tag set)
-- ARGV[1] generation ttl (ms), ARGV[2] epoch candidate, ARGV[3] value
-- candidate (for every missing generation: values are compared per key).
-- What a local tier needs on a hit, as one reply: {epoch, version or false,
-- acceptance or false, value...}.  Generations exactly as GENERATIONS gives
-- them; the version is the entry's 32-byte header (epoch .. id) when the entry
-- belongs to the current epoch.  The body is never copied.
local n = #KEYS
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[2]
  redis.call('SET', KEYS[1], e)
end
local head = e .. ':'
local out = {e, false, redis.call('GET', KEYS[n])}
for i = 2, n - 2 do
  local v = redis.call('GET', KEYS[i])
  if (not v) or string.sub(v, 1, #head) ~= head then
    v = head .. ARGV[3]
    redis.call('SET', KEYS[i], v, 'PX', ARGV[1])
  end
  out[i + 2] = v
end
local h = redis.call('GETRANGE', KEYS[n - 1], 0, 31)
if #h == 32 and string.sub(h, 1, #e) == e then out[2] = h end
return out
""",
)

PUT = Script(
    "put",
    """
-- KEYS[1] epoch, KEYS[2] entry, KEYS[3..] generation keys
-- ARGV[1] id .. encoded entry, ARGV[2] entry ttl (ms),
-- ARGV[3] minimum ttl (ms) of the generation keys, ARGV[4..] expected values
-- Stores the entry only if every generation is still what the fetch captured.
-- Returns the epoch it was stored under, or 0 when refused.
local e = redis.call('GET', KEYS[1])
if not e then return 0 end
for i = 3, #KEYS do
  if redis.call('GET', KEYS[i]) ~= e .. ':' .. ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[2], e .. ARGV[1], 'PX', ARGV[2])
local keep = tonumber(ARGV[3])
for i = 3, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left >= 0 and left < keep then redis.call('PEXPIRE', KEYS[i], keep) end
end
return e
""",
)

BUMP = Script(
    "bump",
    """
-- KEYS[1] epoch, KEYS[2..] generation keys
-- ARGV[1] epoch candidate, ARGV[2] generation ttl (ms), ARGV[3..] new values
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[1]
  redis.call('SET', KEYS[1], e)
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], e .. ':' .. ARGV[i + 1], 'PX', ARGV[2])
end
return 1
""",
)

ACQUIRE_LEASE = Script(
    "acquire_lease",
    """
-- KEYS[1] lease; ARGV[1] owner token, ARGV[2] ttl (ms)
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""",
)

RELEASE_LEASE = Script(
    "release_lease",
    """
-- KEYS[1] lease; ARGV[1] owner token.  Only the owner may release.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)

SERVER = Script(
    "server",
    """
-- KEYS[1] server marker, KEYS[2] epoch; ARGV[1] epoch candidate.
-- Run on every new connection.  If the server is not the one that wrote the
-- marker (it restarted from a snapshot, or a replica was promoted and may
-- lack the last bumps), renew the epoch: everything cached before is dropped.
local info = redis.pcall('INFO', 'server')
local rid = ''
if type(info) == 'string' then rid = string.match(info, 'run_id:(%x+)') or '' end
-- Returns 0 (same server), 1 (no marker yet) or 2 (another server).
local known = redis.call('GET', KEYS[1])
if known ~= rid then
  redis.call('SET', KEYS[1], rid)
  redis.call('SET', KEYS[2], ARGV[1])
  if known then return 2 end
  return 1
end
return 0
""",
)

ALL = (GENERATIONS, PROBE, PUT, BUMP, ACQUIRE_LEASE, RELEASE_LEASE)
"""Scripts called by SHA (loaded again on NOSCRIPT); SERVER is sent whole."""
