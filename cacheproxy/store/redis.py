"""The shared tier: entries, tag generations, acceptances and leases in Redis,
so that several replicas behind a load balancer act as one cache.

Where things are: the key layout and the Lua scripts in
:mod:`~cacheproxy.store.redis_layout`; the connections, Sentinel and the one
call path with its fault mapping in :mod:`~cacheproxy.store.redis_link`; the
lean RESP client under it in :mod:`~cacheproxy.store.resp`; here, what each
:class:`~cacheproxy.store.base.Store` operation asks of Redis.

Generations and eviction.  The danger with a shared tier is a generation
that goes *back* to a value an old entry captured: then a response cached
before a write is served again after it.  With counters that restart at 0
when their key disappears that happens as soon as Redis evicts or expires a
generation key while an entry survives.  Here a generation is never
"missing = 0": a missing generation (never bumped, expired, evicted), and
one written under an older epoch, is *replaced by a fresh random value*
(atomically, in the same script that reads it), and a bump writes a fresh
random value too.  Entries captured before can therefore never match again,
whatever Redis evicted and whatever ``maxmemory-policy`` is set: eviction
costs misses, never correctness.  The price is that generation values are
random, not small counters, and the first read of a tag writes it.

Clear and server changes.  ``clear`` renews the epoch (one SET): every entry
and generation of the old epoch stops counting at once on every replica, then
old entries are deleted with SCAN MATCH on the prefix (memory only).  Every
new connection runs a script comparing the server's ``run_id`` with the one
recorded in ``P server``; on a mismatch (Redis restarted from an RDB/AOF
file, or Sentinel promoted a replica that may lack the last bumps) it renews
the epoch before the connection is used.  Persistence is therefore safe,
just useless for a cache.

Faults.  Every call is bounded (a per-reply socket timeout of ``timeout``,
plus an overall guard) and raises :class:`StoreError`; connection faults, and
timeouts repeated without a success in between, open the
:class:`~cacheproxy.circuit.CircuitBreaker` so that for ``circuit_seconds``
calls fail at once and requests go straight upstream, then one call probes.
A broken connection is tried once more, at once, on a new one (every pooled
connection is dead after a Redis restart); timeouts are never retried.

Bumps are the exception: read-your-writes rests on them, so they are patient
(own pool, ``bump_timeout``, made even while the circuit is open, tried again
until ``bump_deadline``; see
:meth:`RedisStore.bump`).  A bump that still fails is kept as *pending*: the
circuit stays open (nothing is served from Redis by this replica) until the
probe has written it, and if too many pile up the epoch is renewed instead.
What cannot be closed is a bump lost while *another* replica still reaches
Redis (a partition between this replica and Redis only): that replica may
serve pre-write entries until this one's probe succeeds or the entries
expire.  See docs/redis-tier.md.

Supported URLs: ``redis://``, ``rediss://``, ``unix://`` (redis-py's own
syntax, including ``?db=`` and TLS options), and
``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
(optionally ``?sentinel_password=...``) for a Sentinel-managed master: bumps
then wait for one replica (``WAIT``), and the master's address is re-asked
from Sentinel once a second.  Redis Cluster is not supported (keys of one
operation are not in one slot).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from cacheproxy.circuit import CircuitBreaker
from cacheproxy.store import codec
from cacheproxy.store.base import Entry, Generations, Lookup, StoreError
from cacheproxy.store.redis_layout import (
    EPOCH_LEN,
    HEADER,
    Layout,
    new_epoch,
    parse_generations,
    parse_probe,
)
from cacheproxy.store.redis_link import RedisLink, redacted_url
from cacheproxy.store.resp import pack

__all__ = ["RedisStore"]

_log = logging.getLogger("cacheproxy.store.redis")

DEFAULT_MAX_ENTRY_BYTES = 16 * 1024 * 1024
DEFAULT_COMPRESS_MIN_BYTES = 1024
DEFAULT_MAX_LIFETIME = 3600.0
_OFFLOAD_BYTES = 512 * 1024
"""Encode/decode bigger than this runs in a thread, off the event loop."""
_MAX_PENDING_TAGS = 10_000
_BUMP_PAUSE = 0.02
"""Seconds between two attempts of one bump."""
_SCAN_COUNT = b"1000"
_CONFIG_CHECKED = ("maxmemory-policy", "maxmemory", "save", "appendonly")


class RedisStore:
    """A :class:`~cacheproxy.store.base.Store` on Redis, shared by replicas.

    ``clock`` (wall-clock seconds) decides freshness and acceptance expiry,
    as in :class:`~cacheproxy.store.memory.MemoryStore`; Redis TTLs are
    derived from it and only reclaim memory.  ``monotonic`` drives the
    circuit.  Both are injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "cacheproxy:v1:",
        timeout: float = 0.05,
        clock: Callable[[], float] = time.time,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
        compress_level: int = 3,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        max_connections: int = 16,
        circuit_seconds: float = 1.0,
        bump_timeout: float | None = None,
        bump_deadline: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.max_entry_bytes = max_entry_bytes
        self.compress_min_bytes = compress_min_bytes
        self.compress_level = compress_level
        self.max_lifetime = max_lifetime
        self._clock = clock
        self.bump_timeout = max(timeout * 10, 0.5) if bump_timeout is None else bump_timeout
        self.bump_deadline = bump_deadline
        self._keys = Layout(prefix, int(max_lifetime * 1000) + 60_000)
        self._owner = secrets.token_hex(16).encode()
        self.circuit = CircuitBreaker(
            f"redis {redacted_url(url)}", cooldown=circuit_seconds, monotonic=monotonic
        )
        self.link = RedisLink(
            url,
            self._keys,
            self.circuit,
            timeout=timeout,
            bump_timeout=self.bump_timeout,
            max_connections=max_connections,
            monotonic=monotonic,
        )
        self.link.on_probe = self._flush_pending
        self._pending: set[str] = set()
        self._pending_all = False
        self._probe_parsed: tuple[list[Any], tuple[bytes | None, Generations, float]] | None = None
        """The last probe's replies and what :meth:`probe` made of them: the
        probes that shared one parse it once."""
        self.bump_retries = 0
        """Bump attempts that failed and were tried again."""

    def __repr__(self) -> str:
        return f"RedisStore({redacted_url(self.url)!r}, prefix={self.prefix!r})"

    @property
    def server_changes(self) -> int:
        """Times a new connection found a different server (epoch renewed)."""
        return self.link.server_changes

    # -- Store protocol ----------------------------------------------------
    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        return (await self.lookup_versioned(key, tags, credential))[0]

    async def lookup_versioned(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> tuple[Lookup, bytes | None]:
        """:meth:`lookup`, plus the stored entry's version (epoch + id) for a
        local tier to recognise the very same bytes later."""
        link = self.link
        payload = self._keys.lookup(key, tags, credential)
        gens_reply, raw, acc = await link.call(link.reads, payload, 3)
        epoch, gens = parse_generations(gens_reply)
        accepted = self._parse_acceptance(acc)
        if raw is None or raw[:EPOCH_LEN] != epoch:
            return Lookup(None, gens, accepted), None
        entry = await self._decode(memoryview(raw)[HEADER:])
        if entry is None or not self._alive(entry):
            return Lookup(None, gens, accepted), None
        return Lookup(entry, gens, accepted), bytes(raw[:HEADER])

    def probe(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> Awaitable[tuple[bytes | None, Generations, float]]:
        """The stored entry's version (not its body), the generations and the
        acceptance, in one round trip: what a local tier needs to trust its
        own copy of the entry.  (The call's own coroutine, not one around it:
        every local-tier hit awaits this.)

        Identical probes (same key, tags and credential) made in one turn of
        the event loop share one PROBE while it is not written to Redis yet
        (dashboards poll the same lists: a burst of hits asks the very same
        question); see :meth:`~cacheproxy.store.resp.RespConnection.join` for
        why that keeps read-your-writes.  One probe's candidates serve all
        who share it: the script runs once, as for a single lookup.
        """
        tags = tuple(tags)
        link = self.link
        return link.call(
            link.reads,
            lambda: self._keys.probe(key, tags, credential),
            1,
            share=(key, tags, credential),
            parse=self._parse_probe,
        )

    def _parse_probe(self, replies: list[Any]) -> tuple[bytes | None, Generations, float]:
        parsed = self._probe_parsed
        if parsed is not None and parsed[0] is replies:
            return parsed[1]  # a probe shared: parsed once
        version, gens, acc = parse_probe(replies[0])
        result = (version, gens, self._parse_acceptance(acc))
        self._probe_parsed = (replies, result)
        return result

    async def generations(self, tags: Sequence[str]) -> Generations:
        link = self.link
        (reply,) = await link.call(link.reads, self._keys.generations(tags), 1)
        return parse_generations(reply)[1]

    async def put(self, key: bytes, entry: Entry) -> bool:
        return await self.put_versioned(key, entry) is not None

    async def put_versioned(self, key: bytes, entry: Entry) -> bytes | None:
        """:meth:`put`; the stored version, or None when refused."""
        lifetime = min(entry.ttl + entry.stale_for, self.max_lifetime)
        ttl_ms = math.ceil((entry.stored_at + lifetime - self._clock()) * 1000)
        if ttl_ms <= 0 or len(entry.tags) != len(entry.generations):
            return None
        if entry.size > 4 * self.max_entry_bytes:
            return None  # not worth compressing to find out
        try:
            blob = await self._encode(entry)
        except (ValueError, OverflowError, struct.error) as exc:
            _log.warning("redis: entry not stored, it cannot be encoded (%s)", exc)
            return None
        if len(blob) > self.max_entry_bytes:
            return None
        entry_id = secrets.token_hex(8).encode()
        payload = self._keys.put(key, entry.tags, entry_id + blob, ttl_ms, entry.generations)
        link = self.link
        (epoch,) = await link.call(link.writes, payload, 1)
        if not isinstance(epoch, bytes):
            return None  # a tag was bumped (or the epoch renewed) since the capture
        return epoch + entry_id

    async def remove(self, key: bytes) -> None:
        await self._write(pack([b"DEL", self._keys.entry(key)]))

    async def bump(self, tags: Sequence[str]) -> None:
        """Write fresh generations for ``tags``; done in Redis when it returns.

        Read-your-writes rests on this call, so it is patient where lookups
        are quick: it ignores the circuit (a write is rare, and a bump that is
        not even tried is a bump lost), uses its own pool with ``bump_timeout``
        per reply (a reply late only because this process was busy is still a
        success), and tries again until ``bump_deadline`` (once only while
        the circuit is open: Redis is known to be away).  A write may thus be
        delayed, never failed.  If it still fails, the tags are kept pending
        and the circuit opens: this replica serves nothing from Redis until
        its probe has written them.
        """
        if not tags:
            return
        link = self.link
        wanted = list(tags)
        # Redis already known to be away: one attempt, so that writes during
        # an outage are not each delayed by the whole deadline.
        deadline = time.monotonic() + (0.0 if self.circuit.is_open else self.bump_deadline)
        while True:
            batch = sorted(set(wanted) | self._pending) if not self._pending_all else wanted
            payload, n = self._keys.bump(batch, wait_replica=link.sentinel)
            try:
                replies = await link.call(link.bumps, payload, n, admit=False)
                if link.sentinel and replies[-1] == 0 and await link.follow_sentinel(force=True):
                    # No replica has it and the master moved: we wrote to a
                    # demoted master that is about to be overwritten.
                    self.bump_retries += 1
                    continue
            except StoreError as exc:
                if link.closed:
                    raise
                if time.monotonic() + _BUMP_PAUSE >= deadline:
                    self._remember_pending(wanted)
                    self.circuit.failure(None, f"bump lost, kept pending: {exc}")
                    raise StoreError(f"redis bump failed: {exc}") from exc
                self.bump_retries += 1
                await asyncio.sleep(_BUMP_PAUSE)
                continue
            self._pending.difference_update(batch)
            return

    async def accept(self, credential: bytes, until: float) -> None:
        ttl_ms = math.ceil((until - self._clock()) * 1000)
        k = self._keys.accept(credential)
        if ttl_ms <= 0:
            await self._write(pack([b"DEL", k]))
        else:
            await self._write(pack([b"SET", k, repr(until).encode(), b"PX", b"%d" % ttl_ms]))

    async def revoke(self, credential: bytes) -> None:
        await self._write(pack([b"DEL", self._keys.accept(credential)]))

    async def acquire_lease(self, key: bytes, seconds: float) -> bool:
        ms = max(1, math.ceil(seconds * 1000))
        got = await self._write(self._keys.acquire_lease(key, self._owner, ms))
        return bool(got == 1)

    async def release_lease(self, key: bytes) -> None:
        await self._write(self._keys.release_lease(key, self._owner))

    async def clear(self) -> None:
        """Renew the epoch (instant, every replica), then delete old entries.

        Only keys under the prefix are touched.  The deletion pass is memory
        reclamation: if it fails half-way nothing stale can be served anyway.
        """
        await self._write(pack([b"SET", self._keys.epoch, new_epoch()]))
        scan = [b"MATCH", self._keys.entries_pattern, b"COUNT", _SCAN_COUNT]
        cursor = b"0"
        try:
            while True:
                cursor, keys = await self._write(pack([b"SCAN", cursor, *scan]))
                if keys:
                    await self._write(pack([b"UNLINK", *keys]))
                if cursor == b"0":
                    break
        except StoreError as exc:
            _log.warning("redis clear: old entries not all deleted (%s); they expire", exc)

    async def aclose(self) -> None:
        await self.link.aclose()

    # -- beyond the protocol ------------------------------------------------
    async def ping(self) -> bool:
        """True when Redis answers PING within the timeout (for health checks).

        Bypasses the circuit, never raises and changes no state.
        """
        link = self.link
        try:
            (reply,) = await link.call(link.writes, pack([b"PING"]), 1, admit=False)
        except StoreError:
            return False
        return bool(reply == b"PONG")

    async def check_server(self) -> list[str]:
        """Warnings about the server's configuration (logged too); never raises.

        Call once at start-up.  Correctness does not depend on any of these
        settings (see the module docstring); they decide how well the tier
        works.
        """
        warnings: list[str] = []
        link = self.link
        payload = b"".join(pack([b"CONFIG", b"GET", name.encode()]) for name in _CONFIG_CHECKED)
        try:
            replies = await link.call(link.writes, payload, len(_CONFIG_CHECKED), admit=False)
        except StoreError as exc:
            if isinstance(exc.__cause__, ResponseError):
                warnings.append(f"cannot read the Redis configuration ({exc}); not checked")
            else:
                warnings.append(f"Redis unreachable at start-up ({exc})")
        else:
            cfg: dict[str, str] = {}
            for reply in replies:
                for k, v in zip(reply[::2], reply[1::2], strict=True):
                    cfg[k.decode()] = v.decode()
            policy = cfg.get("maxmemory-policy", "")
            maxmemory = int(cfg.get("maxmemory", "0") or 0)
            if maxmemory == 0:
                warnings.append(
                    "Redis maxmemory is 0 (unbounded): memory is bounded only by entry TTLs; "
                    "set maxmemory with maxmemory-policy allkeys-lru"
                )
            elif policy == "noeviction":
                warnings.append(
                    "Redis maxmemory-policy is noeviction: once full, stores and bumps fail "
                    "and the shared tier goes offline until entries expire; use allkeys-lru"
                )
            if cfg.get("save") or cfg.get("appendonly") == "yes":
                warnings.append(
                    "Redis persistence is on (save/appendonly): harmless (a restart renews the "
                    "epoch, so nothing restored is served) but useless for a cache"
                )
        for w in warnings:
            _log.warning("redis %s: %s", redacted_url(self.url), w)
        return warnings

    def stats(self) -> dict[str, float]:
        """Counters for metrics."""
        return {
            "faults": self.circuit.faults,
            "episodes": self.circuit.episodes,
            "rejected": self.circuit.rejected,
            "circuit_open": float(self.circuit.is_open),
            "pending_bumps": len(self._pending) + (1 if self._pending_all else 0),
            "server_changes": self.server_changes,
        }

    # -- helpers -----------------------------------------------------------
    async def _write(self, payload: bytes) -> Any:
        """One command on the writes pool; its reply."""
        link = self.link
        (reply,) = await link.call(link.writes, payload, 1)
        return reply

    async def _flush_pending(self) -> None:
        """Write bumps that failed earlier, before this replica trusts Redis
        again (run by the probe, inside its call: a failure fails the probe)."""
        link = self.link
        if self._pending_all:
            payload, n = pack([b"SET", self._keys.epoch, new_epoch()]), 1
        elif self._pending:
            payload, n = self._keys.bump(sorted(self._pending), wait_replica=link.sentinel)
        else:
            return
        await link.call(link.bumps, payload, n, admit=False)
        if self._pending_all:
            _log.warning("redis: too many bumps were lost during the outage; epoch renewed")
        else:
            _log.info("redis: %d pending bump(s) written", len(self._pending))
        self._pending.clear()
        self._pending_all = False

    def _parse_acceptance(self, raw: bytes | None) -> float:
        if raw is None:
            return 0.0
        try:
            until = float(raw)
        except ValueError:
            return 0.0
        return until if until > self._clock() else 0.0

    def _alive(self, entry: Entry) -> bool:
        lifetime = min(entry.ttl + entry.stale_for, self.max_lifetime)
        return self._clock() < entry.stored_at + lifetime

    def _remember_pending(self, tags: Sequence[str]) -> None:
        if self._pending_all:
            return
        self._pending.update(tags)
        if len(self._pending) > _MAX_PENDING_TAGS:
            self._pending.clear()
            self._pending_all = True

    async def _encode(self, entry: Entry) -> bytes:
        def work() -> bytes:
            return codec.encode(
                entry, compress_min_bytes=self.compress_min_bytes, level=self.compress_level
            )

        if len(entry.body) > _OFFLOAD_BYTES and not entry.variants:
            return await asyncio.to_thread(work)  # it may compress the body
        return work()

    async def _decode(self, blob: memoryview) -> Entry | None:
        try:
            if len(blob) > _OFFLOAD_BYTES // 8 and codec.needs_cpu(blob):
                return await asyncio.to_thread(codec.decode, blob)
            return codec.decode(blob)
        except codec.CodecError as exc:
            _log.warning("redis: undecodable entry ignored (%s)", exc)
            return None
