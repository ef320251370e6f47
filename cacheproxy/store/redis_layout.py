"""What the Redis store keeps where, and the Lua scripts that touch it.

Key layout (``P`` is the prefix, ``cacheproxy:v1:`` by default; nothing
outside it is ever read or written)::

    P epoch          16 hex chars; renewed by clear() and on a server change
    P server         run_id of the server that wrote the marker
    P g:<tag>        "<epoch>:<random 62-bit>"   PX >= longest entry lifetime
    P e:<hex key>    "<epoch><16-hex id><encoded entry>"   PX ttl + stale_for
    P a:<hex cred>   accepted-until (float)      PX until the acceptance ends
    P l:<hex key>    lease owner token           PX lease seconds

Values the scripts handle (see :mod:`cacheproxy.store.redis` for the why):

* the epoch: 16 hex characters, renewed by ``clear`` and whenever the server
  behind the connection changes (restart, failover);
* a generation value: ``<epoch>:<R>`` where ``R`` is a random 62-bit number in
  decimal chosen by the client; a value of an older epoch counts as missing;
* an entry value: ``<epoch><id><encoded entry>`` (16 + 16 bytes of header).

Scripts declare every key they touch in ``KEYS`` and never compute key names,
so they stay valid for ACLs restricted to the prefix.  Commands are packed
here, as RESP bytes (:func:`~cacheproxy.store.resp.pack`), ready for
:meth:`~cacheproxy.store.redis_link.RedisLink.call`.
"""

from __future__ import annotations

import hashlib
import operator
import os
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cacheproxy.store.base import Generations
from cacheproxy.store.resp import pack

HEADER = 32
"""Bytes before an encoded entry: 16 of epoch, 16 of entry id."""
EPOCH_LEN = 16
_MAX_CACHED_TAG_SETS = 4096
_GLOB_SPECIAL = frozenset(b"*?[]\\")
_WAIT_REPLICA_MS = 100
"""Sentinel mode: how long a bump waits for one replica to acknowledge it."""


def new_epoch() -> bytes:
    return secrets.token_hex(EPOCH_LEN // 2).encode()


def new_value() -> int:
    """A generation value: random, non-zero, fits an i64 and a Lua string."""
    return secrets.randbelow((1 << 62) - 1) + 1


_CANDIDATE_RNG = random.Random(os.urandom(16))
"""Candidates must be unique, not secret (anyone who can read Redis sees the
values), so a per-process generator seeded from the OS serves them without a
system call per lookup; reseeded in a forked child (``--workers``), which
would otherwise repeat its parent's sequence."""
os.register_at_fork(after_in_child=lambda: _CANDIDATE_RNG.seed(os.urandom(16)))


def candidates() -> tuple[bytes, bytes]:
    """An epoch candidate and a generation candidate: every lookup sends
    them, in case the epoch or a generation is missing.  One value serves
    every tag of the lookup: a generation must never return to a value *its
    own key* had, and values are only compared per key."""
    raw = _CANDIDATE_RNG.getrandbits(64)
    return b"%016x" % raw, b"%d" % ((raw >> 2) or 1)


def glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in raw)


class Layout:
    """The keys under one prefix and the commands on them, packed.

    ``gen_ttl_ms`` is how long a generation key lives (at least the longest
    entry lifetime; see :mod:`cacheproxy.store.redis`).
    """

    def __init__(self, prefix: str, gen_ttl_ms: int) -> None:
        if not prefix:
            raise ValueError("a Redis prefix is required: nothing may live outside it")
        p = prefix.encode()
        self.prefix = p
        self.epoch = p + b"epoch"
        self.server = p + b"server"
        self.gen_ttl_ms = gen_ttl_ms
        self._gen_ttl_arg = b"%d" % gen_ttl_ms
        self._gen_ttl_bulk = b"$%d\r\n%b\r\n" % (len(self._gen_ttl_arg), self._gen_ttl_arg)
        self._sha_probe = PROBE.sha.encode()
        self._sha_generations = GENERATIONS.sha.encode()
        self._probe_heads: dict[tuple[str, ...], bytes] = {}
        self.load_scripts = b"".join(
            pack([b"SCRIPT", b"LOAD", script.source.encode()]) for script in ALL
        )
        """Every script loaded, in one payload of ``len(ALL)`` commands."""
        self.entries_pattern = glob_escape(p) + b"e:*"

    # -- keys ----------------------------------------------------------------
    def gen(self, tag: str) -> bytes:
        return self.prefix + b"g:" + tag.encode()

    def entry(self, key: bytes) -> bytes:
        return self.prefix + b"e:" + key.hex().encode()

    def accept(self, credential: bytes) -> bytes:
        return self.prefix + b"a:" + credential.hex().encode()

    def lease(self, key: bytes) -> bytes:
        return self.prefix + b"l:" + key.hex().encode()

    # -- commands --------------------------------------------------------------
    def server_check(self) -> bytes:
        """The SERVER script, sent whole (it runs before scripts are loaded)."""
        keys = [self.server, self.epoch]
        return pack([b"EVAL", SERVER.source.encode(), b"2", *keys, new_epoch()])

    def generations(self, tags: Sequence[str]) -> bytes:
        epoch_candidate, value = candidates()
        keys = [self.epoch, *map(self.gen, tags)]
        command = [b"EVALSHA", self._sha_generations, b"%d" % len(keys), *keys]
        return pack([*command, epoch_candidate, self._gen_ttl_arg, *[value] * len(tags)])

    def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> bytes:
        """Three commands: the generations, the entry, the acceptance."""
        return (
            self.generations(tags)
            + pack([b"GET", self.entry(key)])
            + pack([b"GET", self.accept(credential)])
        )

    def probe(self, key: bytes, tags: tuple[str, ...], credential: bytes) -> bytes:
        epoch_candidate, value = candidates()
        k_entry = self.entry(key)
        k_acc = self.accept(credential)
        return b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b$16\r\n%b\r\n$%d\r\n%b\r\n" % (
            self._probe_head(tags),
            len(k_entry),
            k_entry,
            len(k_acc),
            k_acc,
            self._gen_ttl_bulk,
            epoch_candidate,
            len(value),
            value,
        )

    def put(
        self, key: bytes, tags: Sequence[str], value: bytes, ttl_ms: int, gens: Generations
    ) -> bytes:
        keys = [self.epoch, self.entry(key), *map(self.gen, tags)]
        keep_ms = max(ttl_ms, 1000) + 60_000
        args = [value, b"%d" % ttl_ms, b"%d" % keep_ms, *[b"%d" % g for g in gens]]
        return _evalsha(PUT, keys, args)

    def bump(self, tags: Sequence[str], *, wait_replica: bool) -> tuple[bytes, int]:
        """The bump and how many replies it has: with ``wait_replica``
        (Sentinel), a ``WAIT`` for one replica follows, because replication is
        asynchronous: a bump the master acknowledged but had not yet sent to a
        replica would be lost if that replica is promoted."""
        keys = [self.epoch, *map(self.gen, tags)]
        values = [b"%d" % new_value() for _ in tags]
        payload = _evalsha(BUMP, keys, [new_epoch(), self._gen_ttl_arg, *values])
        if not wait_replica:
            return payload, 1
        return payload + pack([b"WAIT", b"1", b"%d" % _WAIT_REPLICA_MS]), 2

    def acquire_lease(self, key: bytes, owner: bytes, ms: int) -> bytes:
        return _evalsha(ACQUIRE_LEASE, [self.lease(key)], [owner, b"%d" % ms])

    def release_lease(self, key: bytes, owner: bytes) -> bytes:
        return _evalsha(RELEASE_LEASE, [self.lease(key)], [owner])

    def _probe_head(self, tags: tuple[str, ...]) -> bytes:
        """The PROBE call packed up to its per-call part, remembered per tag
        set (a hit would otherwise pack the same keys every time)."""
        head = self._probe_heads.get(tags)
        if head is None:
            keys = [self.epoch, *map(self.gen, tags), b"", b""]
            packed = pack([b"EVALSHA", self._sha_probe, b"%d" % len(keys), *keys[:-2]])
            head = b"*%d\r\n" % (len(keys) + 6) + packed.split(b"\r\n", 1)[1]
            if len(self._probe_heads) >= _MAX_CACHED_TAG_SETS:
                self._probe_heads.clear()
            self._probe_heads[tags] = head
        return head


_GEN_VALUE = operator.itemgetter(slice(EPOCH_LEN + 1, None))
"""A generation's value after its ``epoch:`` (parsed in C: no comprehension's
frame, about 2k instructions of a Redis-tier hit)."""


def parse_generations(reply: list[bytes]) -> tuple[bytes, Generations]:
    """The GENERATIONS reply: the epoch and the generations."""
    return bytes(reply[0]), tuple(map(int, map(_GEN_VALUE, reply[1:])))


def parse_probe(reply: list[Any]) -> tuple[bytes | None, Generations, bytes | None]:
    """The PROBE reply: the entry's version, the generations and the raw acceptance."""
    _, version, acc, *gens = reply
    return version, tuple(map(int, map(_GEN_VALUE, gens))), acc


def _evalsha(script: Script, keys: Sequence[bytes], args: Sequence[bytes]) -> bytes:
    return pack([b"EVALSHA", script.sha.encode(), b"%d" % len(keys), *keys, *args])


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
