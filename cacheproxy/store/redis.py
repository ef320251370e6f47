"""The shared tier: entries, tag generations, acceptances and leases in Redis,
so that several replicas behind a load balancer act as one cache.

Key layout (``P`` is the prefix, ``cacheproxy:v1:`` by default; nothing
outside it is ever read or written)::

    P epoch          16 hex chars; renewed by clear() and on a server change
    P server         run_id of the server that wrote the marker
    P g:<tag>        "<epoch>:<random 62-bit>"   PX >= longest entry lifetime
    P e:<hex key>    "<epoch><16-hex id><encoded entry>"   PX ttl + stale_for
    P a:<hex cred>   accepted-until (float)      PX until the acceptance ends
    P l:<hex key>    lease owner token           PX lease seconds

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

Faults.  Every call is bounded (socket timeouts of ``timeout``, plus an
overall guard) and raises :class:`StoreError`; connection faults, and
timeouts repeated without a success in between, open a
:class:`~cacheproxy.circuit.CircuitBreaker` so that for ``circuit_seconds``
calls fail at once and requests go straight upstream, then one call probes.
redis-py retries only a broken connection, once and at once (every pooled
connection is dead after a Redis restart); timeouts are never retried.

Two clients.  The calls every hit makes (:meth:`RedisStore.probe`,
:meth:`RedisStore.lookup_versioned`, and :meth:`RedisStore.generations`) go
through :mod:`~cacheproxy.store.resp`, a lean pipelining client that costs a
few tens of microseconds of CPU where redis-py's asyncio pipeline cost
several hundred; everything else (stores, bumps, leases, admin, Sentinel
discovery) stays on redis-py.  Both run the server check below on every new
connection, reload scripts on NOSCRIPT, and raise the same redis-py
exceptions, so :meth:`RedisStore._run` and :meth:`RedisStore._run_lean` map
faults identically.  With Sentinel the lean client connects to the master
redis-py's Sentinel pool reports, and drops its connections when the
once-a-second check sees the master move.

Bumps are the exception: read-your-writes rests on them, so they are patient
(own pool, ``bump_timeout``, tried again until ``bump_deadline``; see
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
import os
import random
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cacheproxy.circuit import CLOSED_TICKET, CircuitBreaker, Ticket
from cacheproxy.store import codec
from cacheproxy.store import redis_lua as lua
from cacheproxy.store.base import Entry, Generations, Lookup, StoreError
from cacheproxy.store.resp import (
    Address,
    Endpoint,
    RespConnection,
    RespPool,
    classify,
    pack,
)

__all__ = ["RedisStore", "parse_sentinel_url", "redacted_url"]

_log = logging.getLogger("cacheproxy.store.redis")
T = TypeVar("T")

DEFAULT_MAX_ENTRY_BYTES = 16 * 1024 * 1024
DEFAULT_COMPRESS_MIN_BYTES = 1024
DEFAULT_MAX_LIFETIME = 3600.0
_HEADER = 32
"""Bytes before the encoded entry: 16 of epoch, 16 of entry id."""
_EPOCH_LEN = 16
_OFFLOAD_BYTES = 512 * 1024
"""Encode/decode bigger than this runs in a thread, off the event loop."""
_MAX_PENDING_TAGS = 10_000
_SENTINEL_CHECK_SECONDS = 1.0
_WAIT_REPLICA_MS = 100
"""Sentinel mode: how long a bump waits for one replica to acknowledge it."""
_BUMP_CONNECTIONS = 8
_BUMP_PAUSE = 0.02
"""Seconds between two attempts of one bump."""
_SCAN_COUNT = 1000
_MAX_CACHED_TAG_SETS = 4096
_GLOB_SPECIAL = frozenset(b"*?[]\\")


def _new_epoch() -> str:
    return secrets.token_hex(_EPOCH_LEN // 2)


def _new_value() -> int:
    """A generation value: random, non-zero, fits an i64 and a Lua string."""
    return secrets.randbelow((1 << 62) - 1) + 1


_CANDIDATE_RNG = random.Random(os.urandom(16))
"""Candidates must be unique, not secret (anyone who can read Redis sees the
values), so a per-process generator seeded from the OS serves them without a
system call per lookup; reseeded in a forked child (``--workers``), which
would otherwise repeat its parent's sequence."""
os.register_at_fork(after_in_child=lambda: _CANDIDATE_RNG.seed(os.urandom(16)))


def _candidates() -> tuple[bytes, bytes]:
    """An epoch candidate and a generation candidate: every lookup sends
    them, in case the epoch or a generation is missing.  One value serves
    every tag of the lookup: a generation must never return to a value *its
    own key* had, and values are only compared per key."""
    raw = _CANDIDATE_RNG.getrandbits(64)
    return b"%016x" % raw, b"%d" % ((raw >> 2) or 1)


def _glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in raw)


def redacted_url(url: str) -> str:
    """``url`` without its password, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[user:pw@]h1:p1[,h2:p2]/service[/db][?sentinel_password=]``."""
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) or None
    sentinels: list[tuple[str, int]] = []
    for hostport in netloc.split(","):
        host, _, port = hostport.rpartition(":")
        if not host:
            host, port = port, "26379"
        sentinels.append((host.strip("[]"), int(port)))
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ValueError("redis+sentinel URL needs a service name: .../service[/db]")
    db = int(segments[1]) if len(segments) > 1 else 0
    sentinel_password = parse_qs(query).get("sentinel_password", [None])[0]
    return SentinelTarget(
        sentinels, unquote(segments[0]), db, username, password, sentinel_password
    )


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
        if not prefix:
            raise ValueError("a Redis prefix is required: nothing may live outside it")
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.max_entry_bytes = max_entry_bytes
        self.compress_min_bytes = compress_min_bytes
        self.compress_level = compress_level
        self.max_lifetime = max_lifetime
        self._clock = clock
        self._connect_timeout = max(timeout * 5, 0.25)
        """Connecting includes the handshake and the server check: a burst of
        new connections on a busy loop must not count as Redis being down.
        A refused connection fails at once anyway."""
        self._guard = max(1.0, timeout * 20)
        """Overall bound of one call: socket timeouts catch a stalled server;
        this only stops a trickle.  Generous so big entries are not faults."""
        self.bump_timeout = max(timeout * 10, 0.5) if bump_timeout is None else bump_timeout
        self.bump_deadline = bump_deadline
        self._gen_ttl_ms = int(max_lifetime * 1000) + 60_000
        p = prefix.encode()
        self._p = p
        self._k_epoch = p + b"epoch"
        self._k_server = p + b"server"
        self._owner = secrets.token_hex(16)
        self._shas = {s.name: s.sha for s in lua.ALL}
        self._slots = asyncio.Semaphore(max_connections)
        self.circuit = CircuitBreaker(
            f"redis {redacted_url(url)}", cooldown=circuit_seconds, monotonic=monotonic
        )
        self._pending: set[str] = set()
        self._pending_all = False
        self.server_changes = 0
        """Times a new connection found a different server (epoch renewed)."""
        self._sentinel = url.startswith("redis+sentinel://")
        self._sentinel_clients: list[aioredis.Redis] = []
        self._sentinel_checked = float("-inf")
        self._mono = monotonic
        self._client = self._make_client(url, max_connections, timeout, self._connect_timeout)
        self._bump_client = self._make_client(
            url, _BUMP_CONNECTIONS, self.bump_timeout, self.bump_timeout
        )
        self._bump_slots = asyncio.Semaphore(_BUMP_CONNECTIONS)
        """Bumps have their own small pool with a patient timeout: see :meth:`bump`."""
        self._lean = self._make_lean_pool(url, max_connections)
        """The hit path's own connections (see :mod:`~cacheproxy.store.resp`)."""
        self._load_payload = b"".join(
            pack([b"SCRIPT", b"LOAD", script.source.encode()]) for script in lua.ALL
        )
        self._sha_probe = lua.PROBE.sha.encode()
        self._sha_generations = lua.GENERATIONS.sha.encode()
        self._gen_ttl_arg = b"%d" % self._gen_ttl_ms
        self._gen_ttl_bulk = b"$%d\r\n%b\r\n" % (len(self._gen_ttl_arg), self._gen_ttl_arg)
        self._probe_heads: dict[tuple[str, ...], bytes] = {}
        self._probe_parsed: tuple[list[Any], tuple[bytes | None, Generations, float]] | None = None
        """The last probe's replies and what :meth:`probe` made of them: the
        probes that shared one parse it once."""
        self.bump_retries = 0
        """Bump attempts that failed and were tried again."""
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({redacted_url(self.url)!r}, prefix={self.prefix!r})"

    # -- construction ------------------------------------------------------
    def _make_client(
        self, url: str, max_connections: int, timeout: float, connect_timeout: float
    ) -> aioredis.Redis:
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            # One immediate retry on a *broken connection* only: after a Redis
            # restart every pooled connection is dead and the first use of
            # each would otherwise count as an outage.  A server that is
            # really gone refuses the new connection at once; timeouts are
            # never retried (that would double the time to fail).
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "redis_connect_func": self._on_connect,
            "max_connections": max_connections,
        }
        if url.startswith("redis+sentinel://"):
            target = parse_sentinel_url(url)
            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": timeout,
                "socket_connect_timeout": connect_timeout,
            }
            if target.sentinel_password:
                sentinel_kwargs["password"] = target.sentinel_password
            sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
            self._sentinel_clients.extend(sentinel.sentinels)
            client: aioredis.Redis = sentinel.master_for(
                target.service,
                db=target.db,
                username=target.username,
                password=target.password,
                **common,
            )
            return client
        pool = ConnectionPool.from_url(url, **common)
        return aioredis.Redis.from_pool(pool)

    def _make_lean_pool(self, url: str, max_connections: int) -> RespPool:
        """The hit path's pool.  With Sentinel its address is the master's as
        redis-py's Sentinel pool finds it, asked for every new connection
        (:meth:`_follow_sentinel` drops its connections when it moves)."""
        address = None
        if self._sentinel:
            target = parse_sentinel_url(url)
            endpoint = Endpoint(db=target.db, username=target.username, password=target.password)
            address = self._master_address
        else:
            endpoint = Endpoint.from_url(url)
        return RespPool(
            endpoint,
            max_connections=max_connections,
            timeout=self.timeout,
            connect_timeout=self._connect_timeout,
            guard=self._guard,
            on_connect=self._on_lean_connect,
            address=address,
        )

    async def _master_address(self) -> Address:
        pool: Any = self._client.connection_pool
        host, port = await pool.get_master_address()
        return str(host), int(port)

    async def _on_connect(self, conn: AbstractConnection) -> None:
        """Every new connection: handshake, then renew the epoch if the server
        is not the one whose data we knew (restart from disk, failover)."""
        await conn.on_connect()
        await conn.send_command(
            "EVAL", lua.SERVER.source, 2, self._k_server, self._k_epoch, _new_epoch()
        )
        self._note_server(await conn.read_response())

    async def _on_lean_connect(self, conn: RespConnection) -> None:
        """:meth:`_on_connect` for the hit path's connections (handshake done)."""
        command = [b"EVAL", lua.SERVER.source.encode(), b"2", self._k_server, self._k_epoch]
        (reply,) = await conn.request(pack([*command, _new_epoch().encode()]), 1)
        if isinstance(reply, ResponseError):
            raise reply
        self._note_server(reply)

    def _note_server(self, reply: Any) -> None:
        if reply == 2:
            self.server_changes += 1
            _log.info("redis %s: new server behind the URL; epoch renewed", redacted_url(self.url))

    # -- keys --------------------------------------------------------------
    def _k_gen(self, tag: str) -> bytes:
        return self._p + b"g:" + tag.encode()

    def _probe_head(self, tags: Sequence[str]) -> bytes:
        """The PROBE call packed up to its per-call part, remembered per tag
        set (a hit would otherwise pack the same keys every time)."""
        tags = tuple(tags)
        head = self._probe_heads.get(tags)
        if head is None:
            keys = [self._k_epoch, *map(self._k_gen, tags), b"", b""]
            packed = pack([b"EVALSHA", self._sha_probe, b"%d" % len(keys), *keys[:-2]])
            head = b"*%d\r\n" % (len(keys) + 6) + packed.split(b"\r\n", 1)[1]
            if len(self._probe_heads) >= _MAX_CACHED_TAG_SETS:
                self._probe_heads.clear()
            self._probe_heads[tags] = head
        return head

    def _k_entry(self, key: bytes) -> bytes:
        return self._p + b"e:" + key.hex().encode()

    def _k_accept(self, credential: bytes) -> bytes:
        return self._p + b"a:" + credential.hex().encode()

    def _k_lease(self, key: bytes) -> bytes:
        return self._p + b"l:" + key.hex().encode()

    # -- the fault boundary -------------------------------------------------
    async def _run(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call under the circuit, the slot limit and the guard;
        faults are told to the circuit by :meth:`_fault` (see
        :mod:`~cacheproxy.circuit`).  Waiting for a free connection is
        not a fault."""
        ticket = await self._enter()
        try:
            try:
                async with asyncio.timeout(self._guard):
                    await self._slots.acquire()
            except TimeoutError:
                self.circuit.abandon(ticket)
                raise StoreError("redis store busy: no free connection slot") from None
            if not ticket.probe and self.circuit.is_open:
                self._slots.release()  # it opened while we queued: do not pile on
                raise StoreError("redis circuit open")
            try:
                async with asyncio.timeout(self._guard):
                    if ticket.probe:
                        await self._flush_pending()
                    result = await op()
            finally:
                self._slots.release()
        except BaseException as exc:
            self._raise_fault(ticket, exc)
        self.circuit.success(ticket)
        return result

    async def _enter(self) -> Ticket:
        """A ticket for one call; StoreError when the store is closed or its
        circuit open.  With Sentinel, the master is followed first."""
        if self._closed:
            raise StoreError("redis store is closed")
        ticket = self.circuit.enter()
        if ticket is None:
            raise StoreError("redis circuit open")
        if self._sentinel:
            await self._follow_sentinel()
        return ticket

    def _raise_fault(self, ticket: Ticket, exc: BaseException) -> NoReturn:
        """Raise what :meth:`_fault` makes of ``exc``."""
        error = self._fault(ticket, exc)
        if error is exc:
            raise exc
        raise error from exc

    def _fault(self, ticket: Ticket, exc: BaseException) -> BaseException:
        """Tell the circuit how a call ended in ``exc``; what to raise.

        Connection faults open the circuit, timeouts are strikes, and a Redis
        error reply (e.g. OOM) does neither: the server is there and
        answering.  Anything else (our own StoreError, a cancellation) just
        gives the ticket back and is raised as it is.
        """
        if isinstance(exc, ResponseError):
            self.circuit.abandon(ticket)
            return StoreError(f"redis error reply: {exc}")
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            self.circuit.strike(ticket, exc)
            return StoreError(f"redis timed out: {exc}")
        if isinstance(exc, RedisError | OSError):
            self.circuit.failure(ticket, exc)
            return StoreError(f"redis unavailable: {type(exc).__name__}: {exc}")
        self.circuit.abandon(ticket)
        return exc

    async def _run_lean(self, payload: bytes, n: int) -> list[Any]:
        """:meth:`_run` for the hit path: ``n`` commands in one round trip on
        the lean pool, with the same fault mapping.  No semaphore and no
        extra timeout: the pool bounds its connections (requests beyond them
        are pipelined, never queued) and every reply."""
        ticket = await self._enter()
        try:
            if ticket.probe:
                await self._flush_pending()
            replies = await self._checked(payload, n, await self._lean.execute(payload, n))
        except BaseException as exc:
            self._raise_fault(ticket, exc)
        self.circuit.success(ticket)
        return replies

    async def _lean_fault(self, payload: bytes, n: int, exc: BaseException) -> list[Any]:
        """The rest of :meth:`_run_lean` for a request the hit path sent on
        its own (:meth:`probe`, with the circuit closed: a normal ticket)
        that ended in ``exc``, an exception or an error reply: a broken
        connection is tried once more on a new one, missing scripts are
        loaded, and faults are mapped as :meth:`_run_lean` maps them."""
        try:
            if isinstance(exc, ResponseError):
                return await self._lean_again(payload, n, exc)
            if not isinstance(exc, RedisConnectionError):
                raise exc
            return await self._checked(
                payload, n, await self._lean.execute(payload, n, retry=False)
            )
        except BaseException as exc:
            self._raise_fault(CLOSED_TICKET, exc)

    async def _checked(self, payload: bytes, n: int, replies: list[Any]) -> list[Any]:
        """``replies``, unless one is an error reply: then :meth:`_lean_again`."""
        for r in replies:
            if isinstance(r, ResponseError):
                return await self._lean_again(payload, n, r)
        return replies

    async def _lean_again(self, payload: bytes, n: int, error: ResponseError) -> list[Any]:
        """An error reply: raise it, unless scripts were missing (a restart,
        ``SCRIPT FLUSH``): then load them and run again, in one round trip
        on one connection so they are surely on the server that runs them."""
        error = classify(error)
        if not isinstance(error, NoScriptError):
            raise error
        k = len(lua.ALL)
        replies = await self._lean.execute(self._load_payload + payload, k + n)
        for r in replies:
            if isinstance(r, ResponseError):
                raise classify(r)
        return replies[k:]

    async def _follow_sentinel(self, *, force: bool = False) -> bool:
        """At most once a second (or now: ``force``), ask Sentinel where the
        master is; True when it moved.

        redis-py asks only when it opens a connection, so after a failover
        that left the old master running, pooled connections would keep
        talking to it.  When the master moved, idle connections are dropped;
        the next ones go to the new master, whose different ``run_id`` then
        renews the epoch (see :meth:`_on_connect`).
        """
        now = self._mono()
        if not force and now - self._sentinel_checked < _SENTINEL_CHECK_SECONDS:
            return False
        self._sentinel_checked = now
        moved = False
        for client in (self._client, self._bump_client):
            pool: Any = client.connection_pool
            before = pool.master_address
            try:
                async with asyncio.timeout(self._guard):
                    await pool.get_master_address()
            except (RedisError, OSError, TimeoutError) as exc:
                _log.debug("redis sentinel: master not confirmed (%s)", exc)
                return False
            moved = moved or (before is not None and pool.master_address != before)
        if moved:
            self._lean.drop_all()
        return moved

    async def _pipeline(
        self, build: Callable[[Any], None], client: aioredis.Redis | None = None
    ) -> list[Any]:
        """Execute commands in one round trip; reload scripts once on NOSCRIPT."""
        client = client or self._client
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            build(pipe)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self._load_scripts(client)
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return results
        raise AssertionError("unreachable")

    async def _load_scripts(self, client: aioredis.Redis) -> None:
        for script in lua.ALL:
            self._shas[script.name] = await client.script_load(script.source)

    def _evalsha(self, pipe: Any, script: lua.Script, keys: Sequence[bytes], *args: Any) -> None:
        pipe.evalsha(self._shas[script.name], len(keys), *keys, *args)

    async def _flush_pending(self) -> None:
        """Write bumps that failed earlier, before this replica trusts Redis again."""
        if self._pending_all:
            await self._bump_client.set(self._k_epoch, _new_epoch())
            _log.warning("redis: too many bumps were lost during the outage; epoch renewed")
        elif self._pending:
            tags = sorted(self._pending)
            await self._pipeline(lambda pipe: self._add_bump(pipe, tags), self._bump_client)
            _log.info("redis: %d pending bump(s) written", len(tags))
        self._pending.clear()
        self._pending_all = False

    # -- Store protocol ----------------------------------------------------
    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        return (await self.lookup_versioned(key, tags, credential))[0]

    async def lookup_versioned(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> tuple[Lookup, bytes | None]:
        """:meth:`lookup`, plus the stored entry's version (epoch + id) for a
        local tier to recognise the very same bytes later."""
        payload = (
            self._generations_command(tags)
            + pack([b"GET", self._k_entry(key)])
            + pack([b"GET", self._k_accept(credential)])
        )
        gens_reply, raw, acc = await self._run_lean(payload, 3)
        epoch, gens = self._parse_generations(gens_reply)
        accepted = self._parse_acceptance(acc)
        if raw is None or raw[:_EPOCH_LEN] != epoch:
            return Lookup(None, gens, accepted), None
        entry = await self._decode(memoryview(raw)[_HEADER:])
        if entry is None or not self._alive(entry):
            return Lookup(None, gens, accepted), None
        return Lookup(entry, gens, accepted), bytes(raw[:_HEADER])

    async def probe(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> tuple[bytes | None, Generations, float]:
        """The stored entry's version (not its body), the generations and the
        acceptance, in one round trip: what a local tier needs to trust its
        own copy of the entry.

        Identical probes (same key, tags and credential) made in one turn of
        the event loop share one PROBE while it is not written to Redis yet
        (dashboards poll the same lists: a burst of hits asks the very same
        question); see :meth:`~cacheproxy.store.resp.RespConnection.join` for
        why that keeps read-your-writes.  One probe's candidates serve all
        who share it: the script runs once, as for a single lookup.

        The common case (circuit closed, a connection open) awaits the
        connection's future here, without :meth:`_run_lean`'s and the pool's
        coroutines; :meth:`_lean_fault` keeps their retry and fault mapping.
        """
        tags = tuple(tags)
        share = (key, tags, credential)
        lean = self._lean
        if self._closed or self._sentinel or self.circuit.is_open:
            future = None
            payload = self._probe_payload(key, tags, credential)
        else:
            joined = lean.join(share)
            if joined is None:
                payload = self._probe_payload(key, tags, credential)
                future = lean.send(payload, 1, share)
            else:
                future, payload = joined
        if future is None:
            replies = await self._run_lean(payload, 1)
        else:
            try:
                replies = await future
            except BaseException as exc:
                replies = await self._lean_fault(payload, 1, exc)
            else:
                if isinstance(replies[0], ResponseError):
                    replies = await self._lean_fault(payload, 1, replies[0])
            self.circuit.success(CLOSED_TICKET)
        parsed = self._probe_parsed
        if parsed is not None and parsed[0] is replies:
            return parsed[1]  # a probe shared: parsed once
        ((_, version, acc, *gens),) = replies
        result = (
            version,
            tuple([int(v[_EPOCH_LEN + 1 :]) for v in gens]),
            self._parse_acceptance(acc),
        )
        self._probe_parsed = (replies, result)
        return result

    def _probe_payload(self, key: bytes, tags: tuple[str, ...], credential: bytes) -> bytes:
        epoch_candidate, value = _candidates()
        k_entry = self._k_entry(key)
        k_acc = self._k_accept(credential)
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

    async def generations(self, tags: Sequence[str]) -> Generations:
        (reply,) = await self._run_lean(self._generations_command(tags), 1)
        return self._parse_generations(reply)[1]

    async def put(self, key: bytes, entry: Entry) -> None:
        await self.put_versioned(key, entry)

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
        keys = [self._k_epoch, self._k_entry(key), *map(self._k_gen, entry.tags)]
        args = [entry_id + blob, ttl_ms, max(ttl_ms, 1000) + 60_000, *map(str, entry.generations)]

        def build(pipe: Any) -> None:
            self._evalsha(pipe, lua.PUT, keys, *args)

        (epoch,) = await self._run(lambda: self._pipeline(build))
        if not isinstance(epoch, bytes):
            return None  # a tag was bumped (or the epoch renewed) since the capture
        return epoch + entry_id

    async def remove(self, key: bytes) -> None:
        await self._run(lambda: self._client.delete(self._k_entry(key)))

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
        if self._closed:
            raise StoreError("redis store is closed")
        if self._sentinel:
            await self._follow_sentinel()
        wanted = list(tags)
        # Redis already known to be away: one attempt, so that writes during
        # an outage are not each delayed by the whole deadline.
        deadline = time.monotonic() + (0.0 if self.circuit.is_open else self.bump_deadline)
        while True:
            batch = sorted(set(wanted) | self._pending) if not self._pending_all else wanted

            def build(pipe: Any, batch: list[str] = batch) -> None:
                self._add_bump(pipe, batch)

            try:
                async with self._bump_slots, asyncio.timeout(self.bump_timeout * 2):
                    replies = await self._pipeline(build, self._bump_client)
                if self._sentinel and replies[-1] == 0 and await self._follow_sentinel(force=True):
                    # No replica has it and the master moved: we wrote to a
                    # demoted master that is about to be overwritten.
                    self.bump_retries += 1
                    continue
            except (RedisError, OSError, TimeoutError) as exc:
                if time.monotonic() + _BUMP_PAUSE >= deadline:
                    self._remember_pending(wanted)
                    self.circuit.failure(None, f"bump lost, kept pending: {exc}")
                    raise StoreError(f"redis bump failed: {type(exc).__name__}: {exc}") from exc
                self.bump_retries += 1
                await asyncio.sleep(_BUMP_PAUSE)
                continue
            self._pending.difference_update(batch)
            return

    async def accept(self, credential: bytes, until: float) -> None:
        ttl_ms = math.ceil((until - self._clock()) * 1000)
        k = self._k_accept(credential)
        if ttl_ms <= 0:
            await self._run(lambda: self._client.delete(k))
        else:
            await self._run(lambda: self._client.set(k, repr(until), px=ttl_ms))

    async def revoke(self, credential: bytes) -> None:
        await self._run(lambda: self._client.delete(self._k_accept(credential)))

    async def acquire_lease(self, key: bytes, seconds: float) -> bool:
        keys = [self._k_lease(key)]
        ms = max(1, math.ceil(seconds * 1000))
        (got,) = await self._run(
            lambda: self._pipeline(
                lambda p: self._evalsha(p, lua.ACQUIRE_LEASE, keys, self._owner, ms)
            )
        )
        return bool(got == 1)

    async def release_lease(self, key: bytes) -> None:
        keys = [self._k_lease(key)]
        await self._run(
            lambda: self._pipeline(lambda p: self._evalsha(p, lua.RELEASE_LEASE, keys, self._owner))
        )

    async def clear(self) -> None:
        """Renew the epoch (instant, every replica), then delete old entries.

        Only keys under the prefix are touched.  The deletion pass is memory
        reclamation: if it fails half-way nothing stale can be served anyway.
        """
        await self._run(lambda: self._client.set(self._k_epoch, _new_epoch()))
        pattern = _glob_escape(self._p) + b"e:*"
        cursor = 0

        async def batch() -> int:
            nxt, keys = await self._client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            if keys:
                await self._client.unlink(*keys)
            return int(nxt)

        try:
            while True:
                cursor = await self._run(batch)
                if cursor == 0:
                    break
        except StoreError as exc:
            _log.warning("redis clear: old entries not all deleted (%s); they expire", exc)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._lean.aclose()
        await self._client.aclose()
        await self._bump_client.aclose()
        for client in self._sentinel_clients:
            await client.aclose()

    # -- beyond the protocol ------------------------------------------------
    async def ping(self) -> bool:
        """True when Redis answers PING within the timeout (for health checks).

        Bypasses the circuit, never raises and changes no state.
        """
        if self._closed:
            return False
        try:
            async with asyncio.timeout(self._guard):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def check_server(self) -> list[str]:
        """Warnings about the server's configuration (logged too); never raises.

        Call once at start-up.  Correctness does not depend on any of these
        settings (see the module docstring); they decide how well the tier
        works.
        """
        warnings: list[str] = []
        try:
            async with asyncio.timeout(self._guard):
                cfg: dict[str, str] = {}
                for name in ("maxmemory-policy", "maxmemory", "save", "appendonly"):
                    reply: dict[Any, Any] = await self._client.config_get(name)
                    for k, v in reply.items():
                        cfg[_text(k)] = _text(v)
        except ResponseError as exc:
            warnings.append(f"cannot read the Redis configuration ({exc}); not checked")
        except (RedisError, OSError, TimeoutError) as exc:
            warnings.append(f"Redis unreachable at start-up ({type(exc).__name__}: {exc})")
        else:
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
    def _generations_command(self, tags: Sequence[str]) -> bytes:
        """The GENERATIONS script call, packed (see :mod:`~cacheproxy.store.resp`)."""
        epoch_candidate, value = _candidates()
        keys = [self._k_epoch, *map(self._k_gen, tags)]
        command = [b"EVALSHA", self._sha_generations, b"%d" % len(keys), *keys]
        return pack([*command, epoch_candidate, self._gen_ttl_arg, *[value] * len(tags)])

    def _add_bump(self, pipe: Any, tags: Sequence[str]) -> None:
        keys = [self._k_epoch, *map(self._k_gen, tags)]
        values = [_new_value() for _ in tags]
        self._evalsha(pipe, lua.BUMP, keys, _new_epoch(), self._gen_ttl_ms, *values)
        if self._sentinel:
            # Replication is asynchronous: a bump the master acknowledged but
            # had not yet sent to a replica would be lost if that replica is
            # promoted.  Wait (briefly) for one replica to have it.
            pipe.execute_command("WAIT", 1, _WAIT_REPLICA_MS)

    @staticmethod
    def _parse_generations(reply: list[bytes]) -> tuple[bytes, Generations]:
        epoch = bytes(reply[0])
        return epoch, tuple(int(v[_EPOCH_LEN + 1 :]) for v in reply[1:])

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
