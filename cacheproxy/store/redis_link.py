"""The Redis store's connection to Redis: where it is, how it is reached,
and the one path every call takes.

Every call goes through :meth:`RedisLink.call`: the circuit (see
:mod:`cacheproxy.circuit`), Sentinel's master followed, pending bumps written
first by a probe, one round trip on a :class:`~cacheproxy.store.resp.RespPool`
(identical reads of one loop turn may share it), a broken connection tried
once more on a new one, scripts loaded again on ``NOSCRIPT``, and faults
mapped to :class:`~cacheproxy.store.base.StoreError` and told to the circuit:
connection faults open it, timeouts are strikes, and an error reply (e.g.
OOM) does neither (the server is there and answering).

Three pools, so that one kind of call never queues behind another: ``reads``
(every hit's round trip), ``writes`` (stores, acceptances, leases, admin) and
``bumps`` (few, patient: read-your-writes rests on them; own timeout).  Every
new connection of each runs the server check (:data:`~cacheproxy.store.
redis_layout.SERVER`): a server that is not the one whose data we knew (a
restart from disk, a failover) renews the epoch before the connection is used.

redis-py is used for what it does well and off the hot path: parsing URLs
exactly as its users expect, TLS contexts, its exception classes, and
Sentinel discovery.  With ``redis+sentinel://`` every new connection asks
Sentinel for the master, and at most once a second a call checks whether the
master moved (redis-py would only ask when connecting, so after a failover
that left the old master running, pooled connections would keep talking to
it); when it moved, every connection is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cacheproxy.circuit import CLOSED_TICKET, CircuitBreaker, Ticket
from cacheproxy.store.base import StoreError
from cacheproxy.store.redis_layout import ALL, Layout
from cacheproxy.store.resp import Address, Endpoint, RespConnection, RespPool, classify

__all__ = ["RedisLink", "SentinelTarget", "parse_sentinel_url", "redacted_url"]

_log = logging.getLogger("cacheproxy.store.redis")
T = TypeVar("T")

_SENTINEL_CHECK_SECONDS = 1.0
_BUMP_CONNECTIONS = 8


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


class RedisLink:
    """Pools to one Redis (or Sentinel-managed master) behind one circuit."""

    def __init__(
        self,
        url: str,
        layout: Layout,
        circuit: CircuitBreaker,
        *,
        timeout: float,
        bump_timeout: float,
        max_connections: int,
        monotonic: Callable[[], float],
    ) -> None:
        self.url = url
        self.circuit = circuit
        self._layout = layout
        self._mono = monotonic
        self.connect_timeout = max(timeout * 5, 0.25)
        """Connecting includes the handshake and the server check: a burst of
        new connections on a busy loop must not count as Redis being down.
        A refused connection fails at once anyway."""
        self.guard = max(1.0, timeout * 20)
        """Overall bound of one call: socket timeouts catch a stalled server;
        this only stops a trickle.  Generous so big entries are not faults."""
        self.on_probe: Callable[[], Awaitable[None]] | None = None
        """Run by a probe before its own call (the store's pending bumps)."""
        self.server_changes = 0
        """Times a new connection found a different server (epoch renewed)."""
        self.closed = False
        self.sentinel = url.startswith("redis+sentinel://")
        self._sentinels: Sentinel | None = None
        self._service = ""
        self._master: Address | None = None
        self._sentinel_checked = float("-inf")
        address: Callable[[], Awaitable[Address]] | None = None
        if self.sentinel:
            target = parse_sentinel_url(url)
            endpoint = Endpoint(db=target.db, username=target.username, password=target.password)
            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": timeout,
                "socket_connect_timeout": self.connect_timeout,
            }
            if target.sentinel_password:
                sentinel_kwargs["password"] = target.sentinel_password
            # (redis-py before 8 did not annotate Sentinel.__init__)
            sentinels = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call,unused-ignore]
            self._sentinels = sentinels
            self._service = target.service
            address = self._discover_master
        else:
            endpoint = Endpoint.from_url(url)

        def pool(connections: int, per_reply: float, guard: float) -> RespPool:
            return RespPool(
                endpoint,
                max_connections=connections,
                timeout=per_reply,
                connect_timeout=max(self.connect_timeout, per_reply),
                guard=guard,
                on_connect=self._check_server,
                address=address,
            )

        self.reads = pool(max_connections, timeout, self.guard)
        self.writes = pool(max_connections, timeout, self.guard)
        self.bumps = pool(_BUMP_CONNECTIONS, bump_timeout, bump_timeout * 2)
        self._pools = (self.reads, self.writes, self.bumps)

    @overload
    async def call(
        self,
        pool: RespPool,
        payload: bytes | Callable[[], bytes],
        n: int,
        *,
        share: Hashable | None = None,
        admit: bool = True,
    ) -> list[Any]: ...

    @overload
    async def call(
        self,
        pool: RespPool,
        payload: bytes | Callable[[], bytes],
        n: int,
        *,
        share: Hashable | None = None,
        admit: bool = True,
        parse: Callable[[list[Any]], T],
    ) -> T: ...

    async def call(
        self,
        pool: RespPool,
        payload: bytes | Callable[[], bytes],
        n: int,
        *,
        share: Hashable | None = None,
        admit: bool = True,
        parse: Callable[[list[Any]], Any] | None = None,
    ) -> Any:
        """``n`` commands in one round trip on ``pool``; their replies, or
        what ``parse`` makes of them (so that a hit's caller can return this
        coroutine itself instead of wrapping it in one more).

        ``share``: identical reads made in this loop turn, not yet written,
        share one request (see :meth:`~cacheproxy.store.resp.RespConnection.join`);
        ``payload`` may then be a function, called only when this call makes
        the request itself (a burst of identical hits packs one).
        ``admit=False`` (bumps, health checks): the call is made even while
        the circuit is open, and its outcome is not told to the circuit.
        """
        if self.closed:
            raise StoreError("redis store is closed")
        ticket: Ticket | None = None
        if admit:
            circuit = self.circuit
            ticket = CLOSED_TICKET if not circuit.is_open else circuit.enter()
            if ticket is None:
                raise StoreError("redis circuit open")
        try:
            if self.sentinel:
                await self.follow_sentinel()
            if ticket is not None and ticket.probe and self.on_probe is not None:
                await self.on_probe()
            future: asyncio.Future[list[Any]] | None = None
            joined = None if share is None else pool.join(share)
            if joined is not None:
                future, payload = joined
            else:
                if not isinstance(payload, bytes):
                    payload = payload()
                future = pool.send(payload, n, share)
            if future is None:
                replies = await pool.execute(payload, n)
            else:
                try:
                    replies = await future
                except RedisConnectionError:
                    # a dead pooled connection (Redis restarted): once more, on a new one
                    replies = await pool.execute(payload, n, retry=False)
            for r in replies:
                if isinstance(r, ResponseError):
                    replies = await self._again(pool, payload, n, r)
                    break
        except BaseException as exc:
            error = self._fault(ticket, exc)
            if error is exc:
                raise
            raise error from exc
        if ticket is not None:
            self.circuit.success(ticket)
        return replies if parse is None else parse(replies)

    async def _again(
        self, pool: RespPool, payload: bytes, n: int, error: ResponseError
    ) -> list[Any]:
        """An error reply: raise it, unless scripts were missing (a restart,
        ``SCRIPT FLUSH``): then load them and run again, in one round trip
        on one connection so they are surely on the server that runs them."""
        error = classify(error)
        if not isinstance(error, NoScriptError):
            raise error
        k = len(ALL)
        replies = await pool.execute(self._layout.load_scripts + payload, k + n)
        for r in replies:
            if isinstance(r, ResponseError):
                raise classify(r)
        return replies[k:]

    def _fault(self, ticket: Ticket | None, exc: BaseException) -> BaseException:
        """Tell the circuit how a call ended in ``exc``; what to raise.

        A :class:`StoreError` from a call made inside this one (a probe's
        pending bumps) counts as the fault that caused it."""
        circuit = self.circuit if ticket is not None else None
        cause: BaseException = exc
        if isinstance(exc, StoreError) and exc.__cause__ is not None:
            cause = exc.__cause__
        if isinstance(cause, ResponseError):
            error: BaseException = StoreError(f"redis error reply: {cause}")
            verdict = None
        elif isinstance(cause, RedisTimeoutError | TimeoutError):
            error, verdict = StoreError(f"redis timed out: {cause}"), "strike"
        elif isinstance(cause, RedisError | OSError):
            error = StoreError(f"redis unavailable: {type(cause).__name__}: {cause}")
            verdict = "failure"
        else:
            error, verdict = exc, None
        if isinstance(exc, StoreError):
            error = exc  # already what callers catch, with its cause
        if circuit is not None:
            if verdict == "strike":
                circuit.strike(ticket, cause)
            elif verdict == "failure":
                circuit.failure(ticket, cause)
            else:
                circuit.abandon(ticket)
        return error

    async def _check_server(self, conn: RespConnection) -> None:
        """Every new connection (handshake done): renew the epoch if the
        server is not the one whose data we knew (restart from disk, failover)."""
        (reply,) = await conn.request(self._layout.server_check(), 1)
        if isinstance(reply, ResponseError):
            raise reply
        if reply == 2:
            self.server_changes += 1
            _log.info("redis %s: new server behind the URL; epoch renewed", redacted_url(self.url))

    async def _discover_master(self) -> Address:
        assert self._sentinels is not None
        host, port = await self._sentinels.discover_master(self._service)
        self._master = (str(host), int(port))
        return self._master

    async def follow_sentinel(self, *, force: bool = False) -> bool:
        """At most once a second (or now: ``force``), ask Sentinel where the
        master is; True when it moved (then every connection is dropped; the
        next ones go to the new master, whose different ``run_id`` renews
        the epoch)."""
        now = self._mono()
        if not force and now - self._sentinel_checked < _SENTINEL_CHECK_SECONDS:
            return False
        self._sentinel_checked = now
        before = self._master
        try:
            async with asyncio.timeout(self.guard):
                after = await self._discover_master()
        except (RedisError, OSError, TimeoutError) as exc:
            _log.debug("redis sentinel: master not confirmed (%s)", exc)
            return False
        if before is None or after == before:
            return False
        for pool in self._pools:
            pool.drop_all()
        return True

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pool in self._pools:
            await pool.aclose()
        if self._sentinels is not None:
            for client in self._sentinels.sentinels:
                await client.aclose()
