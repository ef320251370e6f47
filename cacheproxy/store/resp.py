"""A lean RESP2 client for the store's hot path (every cache hit).

Why not redis-py: a hit makes one round trip of three commands, and redis-py's
asyncio pipeline spends several hundred microseconds of CPU around it
(Pipeline objects, per-command packing and encoding, the connection pool,
response callbacks, retry wrappers).  Here a round trip is one ``bytes``
written to an :class:`asyncio.Protocol` and N replies parsed by
``hiredis.Reader`` as they arrive; one timer bounds it.  Every call of the
store goes through it (:mod:`~cacheproxy.store.redis_link`); redis-py stays
for URL parsing, TLS contexts, its exception classes and Sentinel discovery.

The connections behave like redis-py's, so that the store's fault boundary
sees the same exceptions (``redis.exceptions``):

* each new connection does the same handshake (AUTH with username and
  password, SELECT, TLS for ``rediss://``, unix sockets), then the caller's
  ``on_connect`` (the store's server-change check); a refused connection or a
  failed AUTH is a :class:`~redis.exceptions.ConnectionError`;
* a connection that receives nothing for ``timeout`` while a reply is due (a
  socket timeout) fails every request waiting on it with
  :class:`~redis.exceptions.TimeoutError` and is dropped; a request not
  answered within ``guard`` in all fails alone (its reply is skipped when it
  comes);
* an error reply is a :class:`~redis.exceptions.ResponseError`
  (:class:`~redis.exceptions.NoScriptError` for ``NOSCRIPT``); the connection
  stays usable;
* a broken connection is tried again once, at once, on a new connection: after
  a Redis restart every pooled connection is dead, and the first use of each
  must not count as an outage.  Timeouts are never retried.

Requests never wait for a free connection: when all ``max_connections`` are
busy, a request is pipelined behind the others on the least busy one (Redis
answers a connection's commands in order).  So the pool is bounded, a burst
costs no waiting machinery, and Redis reads several requests per syscall.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Any, cast

import hiredis
from redis.asyncio.connection import RedisSSLContext, parse_url
from redis.exceptions import (
    AuthenticationError,
    InvalidResponse,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "Endpoint",
    "RespConnection",
    "RespPool",
    "classify",
    "pack",
]

Address = tuple[str, int]


def pack(args: Sequence[bytes]) -> bytes:
    """One command in RESP2 (arguments already bytes: packing is on the hot path)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def classify(reply: ResponseError) -> ResponseError:
    """An error reply as the redis-py exception it stands for."""
    msg = str(reply)
    if msg.startswith("NOSCRIPT"):
        return NoScriptError(msg)
    return reply


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, from a ``redis://``, ``rediss://`` or
    ``unix://`` URL parsed exactly as redis-py parses it."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        kw: dict[str, Any] = dict(parse_url(url))
        context = None
        if url.startswith("rediss://"):
            # SSLConnection's defaults: verify the certificate and the host.
            opts: dict[str, Any] = {"cert_reqs": "required", "check_hostname": True}
            opts.update({k[4:]: v for k, v in kw.items() if k.startswith("ssl_")})
            context = RedisSSLContext(**opts).get()
        return cls(
            host=str(kw.get("host", "localhost")),
            port=int(kw.get("port", 6379)),
            path=kw.get("path"),
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            ssl=context,
        )


class _Waiter:
    """One request in flight: ``want`` replies for ``future``, due by ``end``;
    ``joined``: the futures of identical requests that share it (see
    :meth:`RespConnection.join`), None while there are none."""

    __slots__ = ("end", "future", "joined", "payload", "replies", "want")

    def __init__(
        self, future: asyncio.Future[list[Any]], want: int, end: float, payload: bytes
    ) -> None:
        self.future = future
        self.want = want
        self.end = end
        self.payload = payload
        self.replies: list[Any] = []
        self.joined: list[asyncio.Future[list[Any]]] | None = None

    def settled(self) -> bool:
        """Nobody waits for the replies any more (answered, failed, cancelled)."""
        if not self.future.done():
            return False
        return self.joined is None or all(f.done() for f in self.joined)

    def deliver(self) -> None:
        """The replies to the request and to every one that joined it."""
        replies = self.replies
        if not self.future.done():  # else it timed out or was cancelled
            self.future.set_result(replies)
        for f in self.joined or ():
            if not f.done():
                f.set_result(replies)

    def fail(self, exc: Exception) -> None:
        """``exc`` to the request, and a copy of it to every one that joined
        (each raises its own: tracebacks are written into the exception)."""
        if not self.future.done():
            self.future.set_exception(exc)
        for f in self.joined or ():
            if not f.done():
                f.set_exception(_copy_of(exc))


def _copy_of(exc: Exception) -> Exception:
    try:
        return type(exc)(*exc.args)
    except Exception:  # pragma: no cover - an exception type with another signature
        return exc


class RespConnection(asyncio.Protocol):
    """One connection; requests pipelined on it are answered in order.

    Requests made in one turn of the event loop are written together (one
    syscall; Redis then reads them at once and answers in one write), and
    one timer per busy connection, not one per request, watches for stalls.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        per_reply: float,
        guard: float,
        on_close: Callable[[RespConnection], None] | None = None,
    ) -> None:
        self._loop = loop
        self.per_reply = per_reply
        """Socket timeout: the longest silence while a reply is due."""
        self.guard = guard
        """The longest a request may wait for its replies in all."""
        self._on_close = on_close
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self.pending: collections.deque[_Waiter] = collections.deque()
        """Requests made and not fully answered yet, oldest first."""
        self._out: list[bytes] = []
        self._unsent: dict[Hashable, _Waiter] = {}
        """Requests of this loop turn, not written yet, that identical ones
        may join (see :meth:`join`); emptied when they are written."""
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        """When bytes last arrived, or requests were sent to an idle
        connection (``time.monotonic``: uvloop's ``loop.time()`` is read once
        per loop turn, and a long turn would make replies look late)."""
        self.broken = False
        """True once the connection must not be used again."""

    def set_timeouts(self, per_reply: float, guard: float) -> None:
        """New timeouts (the handshake's were the connect timeout's), from
        the next request on: a timer armed with the old ones is dropped."""
        self.per_reply = per_reply
        self.guard = guard
        if self._timer is not None and not self.pending:
            self._timer.cancel()
            self._timer = None

    @property
    def filling(self) -> bool:
        """Requests are waiting to be written at the end of this loop turn."""
        return bool(self._out)

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_data = monotonic()
        reader = self._reader
        reader.feed(data)
        pending = self.pending
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if not pending:  # nothing was asked: the stream is out of step
                    self.close()
                    return
                waiter = pending[0]
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.want:
                    pending.popleft()
                    if waiter.joined is not None:
                        waiter.deliver()
                    elif not waiter.future.done():  # else it timed out or was cancelled
                        waiter.future.set_result(waiter.replies)
        except InvalidResponse as exc:
            self._fail_all(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))
        self.close()

    # -- use -----------------------------------------------------------------
    def request(
        self, payload: bytes, n: int, share: Hashable | None = None
    ) -> asyncio.Future[list[Any]]:
        """Send ``payload`` (``n`` commands); the future of their ``n`` replies.

        A future, not a coroutine: one layer less to resume on every hit.
        Cancelling it leaves the request's place in the queue: its replies
        are read and dropped, and the connection stays usable (and requests
        that joined it still get them).  With ``share``, identical requests
        may :meth:`join` this one until it is written.
        """
        loop = self._loop
        if self.broken:
            failed: asyncio.Future[list[Any]] = loop.create_future()
            failed.set_exception(RedisConnectionError("connection to redis closed"))
            return failed
        waiter = _Waiter(loop.create_future(), n, monotonic() + self.guard, payload)
        self.pending.append(waiter)
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(payload)
        if share is not None:
            self._unsent[share] = waiter
        if self._timer is None:
            self._timer = loop.call_later(self.per_reply, self._on_timer)
        return waiter.future

    def join(self, share: Hashable) -> tuple[asyncio.Future[list[Any]], bytes] | None:
        """A future of the replies of the request made with ``share`` in this
        loop turn, and its payload; None unless that request is still *not
        written*.

        Why only then: Redis will run it after the caller arrived, so its
        answer reflects everything the caller's client saw completed (a
        write, a bump) exactly as a request of the caller's own would.  A
        request already written may have been answered from an older state.
        The caller gets a future of its own: cancelling it touches no one
        else, and whoever made the request may be cancelled without the
        joiners losing the replies.
        """
        waiter = self._unsent.get(share)
        if waiter is None or self.broken:
            return None
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if waiter.joined is None:
            waiter.joined = [future]
        else:
            waiter.joined.append(future)
        return future, waiter.payload

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._unsent:
            self._unsent.clear()  # written now: nothing may join them any more
        if len(out) >= len(self.pending):  # nothing was due before: count from now
            self._last_data = monotonic()
        if self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _on_timer(self, last_look: bool = False) -> None:
        self._timer = None
        if not self.pending or self.broken:
            return
        now = monotonic()
        if now >= self._last_data + self.per_reply:
            if not last_look:
                # Timers run before the loop reads its sockets: after a long
                # turn of the loop (a busy proxy, not a slow Redis) the replies
                # may be waiting unread.  Look again after the next read.
                self._timer = self._loop.call_later(0.001, self._on_timer, True)
                return
            # Nothing came for a whole socket timeout: the server is stalled
            # (or gone quiet); every request on this connection times out.
            self._fail_all(RedisTimeoutError("timeout reading from redis"))
            self.close()
            return
        due = self._last_data + self.per_reply
        for waiter in self.pending:  # bytes keep coming, but some replies late
            if waiter.settled():
                continue
            if waiter.end <= now:
                waiter.fail(RedisTimeoutError("redis reply took too long"))
            elif waiter.end < due:
                due = waiter.end
        self._timer = self._loop.call_later(max(due - now, 0.001), self._on_timer)

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, collections.deque()
        for waiter in pending:
            waiter.fail(exc)

    def close(self) -> None:
        if self.broken:
            return
        self.broken = True
        self._out.clear()
        self._unsent.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._fail_all(RedisConnectionError("connection to redis closed"))
        if self._on_close is not None:
            self._on_close(self)


class RespPool:
    """At most ``max_connections`` :class:`RespConnection`, shared by pipelining.

    ``address`` (Sentinel) is awaited for every new connection, as redis-py's
    Sentinel pool asks for the master's address whenever it connects.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        max_connections: int,
        timeout: float,
        connect_timeout: float,
        guard: float,
        on_connect: Callable[[RespConnection], Awaitable[None]] | None = None,
        address: Callable[[], Awaitable[Address]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.max_connections = max(1, max_connections)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.guard = guard
        self._on_connect = on_connect
        self._address = address
        self._conns: list[RespConnection] = []
        """Open connections, ready for use."""
        self._opening: list[asyncio.Task[RespConnection]] = []
        """Connections being opened (kept here until done)."""
        self._last: RespConnection | None = None
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open or being opened."""
        return len(self._conns) + len(self._opening)

    async def execute(self, payload: bytes, n: int, *, retry: bool = True) -> list[Any]:
        """One round trip of ``n`` commands; replies in order (error replies
        included as exceptions).  ``retry=False``:
        the caller's first attempt (:meth:`send`) already failed."""
        for attempt in (0, 1) if retry else (1,):
            try:
                conn = self._pick() or await self._open_or_ride()
                return await conn.request(payload, n)
            except RedisConnectionError:
                if attempt == 1:
                    raise
                # a dead pooled connection (Redis restarted): once more, on a new one
        raise AssertionError("unreachable")

    def send(
        self, payload: bytes, n: int, share: Hashable | None = None
    ) -> asyncio.Future[list[Any]] | None:
        """The first attempt of :meth:`execute` without a coroutine: the
        future of the replies when a connection is open, else None (then
        :meth:`execute`).  A broken connection fails it with
        :class:`~redis.exceptions.ConnectionError`: the caller tries again
        with ``execute(retry=False)``.  ``share``: see :meth:`join`."""
        conn = self._pick()
        return None if conn is None else conn.request(payload, n, share)

    def join(self, share: Hashable) -> tuple[asyncio.Future[list[Any]], bytes] | None:
        """Join the request sent with ``share`` in this loop turn while it is
        not written yet (see :meth:`RespConnection.join`); None otherwise.
        The requests of one turn all go to the same connection (:meth:`_pick`)."""
        last = self._last
        return None if last is None else last.join(share)

    def drop_all(self) -> None:
        """Close every connection (the server behind the address changed);
        requests on them fail as broken connections and are tried again."""
        for conn in list(self._conns):
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._opening):
            task.cancel()
        self.drop_all()

    # -- internals -----------------------------------------------------------
    def _pick(self) -> RespConnection | None:
        """The connection requests of this loop turn already go to, else an
        idle one, else (at the bound) the least busy one; None: open one."""
        last = self._last
        if last is not None and last.filling:
            return last
        best = None
        for conn in self._conns:
            if not conn.pending:
                self._last = conn
                return conn
            if best is None or len(conn.pending) < len(best.pending):
                best = conn
        if best is not None and len(self._conns) + len(self._opening) >= self.max_connections:
            self._last = best
            return best
        return None

    async def _open_or_ride(self) -> RespConnection:
        """A new connection, or one being opened when all may be."""
        if self._closed:
            raise RedisConnectionError("redis pool closed")
        if len(self._conns) + len(self._opening) < self.max_connections:
            task = asyncio.ensure_future(self._open())
            self._opening.append(task)
            task.add_done_callback(self._opened)
        else:
            task = self._opening[-1]  # all are being opened: ride on one
        # shielded: the requests riding on it must not lose it if this one is cancelled
        return await asyncio.shield(task)

    async def _open(self) -> RespConnection:
        conn = await self._connect()
        if conn.broken:
            raise RedisConnectionError("connection to redis lost while connecting")
        self._conns.append(conn)
        return conn

    def _opened(self, task: asyncio.Task[RespConnection]) -> None:
        self._opening.remove(task)
        if not task.cancelled():
            task.exception()  # retrieved here too: its riders may all be gone

    def _forget(self, conn: RespConnection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        if self._last is conn:
            self._last = None

    async def _connect(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        ep = self.endpoint

        def factory() -> RespConnection:
            wait = self.connect_timeout  # the handshake's replies: see __init__
            return RespConnection(loop, wait, wait, self._forget)

        try:
            async with asyncio.timeout(self.connect_timeout):
                conn: RespConnection
                if ep.path is not None:
                    _, conn = await loop.create_unix_connection(factory, ep.path)
                else:
                    host, port = (ep.host, ep.port)
                    if self._address is not None:
                        host, port = await self._address()
                    _, conn = await loop.create_connection(
                        factory,
                        host,
                        port,
                        ssl=ep.ssl,
                        server_hostname=host if ep.ssl is not None else None,
                    )
                try:
                    await self._handshake(conn)
                    if self._on_connect is not None:
                        await self._on_connect(conn)
                except BaseException:
                    conn.close()
                    raise
                conn.set_timeouts(self.timeout, self.guard)
        except TimeoutError as exc:
            raise RedisTimeoutError("timeout connecting to redis") from exc
        except OSError as exc:
            raise RedisConnectionError(f"error connecting to redis: {exc}") from exc
        if self._closed:
            conn.close()
            raise RedisConnectionError("redis pool closed")
        return conn

    async def _handshake(self, conn: RespConnection) -> None:
        """What redis-py's ``on_connect`` does for RESP2: AUTH, then SELECT."""
        ep = self.endpoint
        commands: list[bytes] = []
        if ep.password is not None:
            auth = [b"AUTH", ep.password.encode()]
            if ep.username:
                auth.insert(1, ep.username.encode())
            commands.append(pack(auth))
        if ep.db:
            commands.append(pack([b"SELECT", b"%d" % ep.db]))
        if not commands:
            return
        replies = await conn.request(b"".join(commands), len(commands))
        for i, r in enumerate(replies):
            if isinstance(r, ResponseError):
                if i == 0 and ep.password is not None:
                    raise AuthenticationError(f"redis AUTH failed: {r}")
                raise RedisConnectionError(f"redis handshake failed: {r}")
