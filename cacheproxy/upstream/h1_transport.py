"""The lean transport: pooled HTTP/1.1 over asyncio protocols and httptools.

Why not just aiohttp?  Forwarding is most of what the proxy does on a miss or
a write, and aiohttp's client spends most of its per-request CPU on machinery
a one-upstream forwarder never uses (URL objects, cookie jars, multidicts,
tracing hooks, timers per phase, a task per request body).  This transport
does only what slurmrestd needs, with llhttp (httptools, as in uvicorn)
parsing the responses; see ``benchmarks/RESULTS-forward.md`` for the figures.

What it does:

* keeps up to ``max_connections`` keep-alive connections (TCP or UNIX),
  reusing the most recently used first; a request beyond that waits for one,
  at most ``connect_timeout`` (then :class:`UpstreamTimeout` with
  ``sent=False``);
* writes the head exactly as given (target and headers byte for byte; adds
  only ``Host`` when absent, and ``Content-Length`` or chunked framing when
  the caller gave none), then the body, streamed with back-pressure;
* frames responses by Content-Length, chunked encoding or connection close;
  204, 304 (slurmrestd's bare ``304 NOT MODIFIED``) and HEAD answers have no
  body; ``Connection: close`` (every slurmrestd error answer) retires the
  connection once the body is read;
* retries a request at most once, only when :func:`may_retry` allows it and
  only when a *reused* connection closed before any byte of the response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from cacheproxy.upstream.base import (
    Headers,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamTimeout,
)
from cacheproxy.upstream.h1_conn import H1Connection, StaleConnection, read_buffer
from cacheproxy.upstream.retry import may_retry
from cacheproxy.upstream.urls import UpstreamAddress, parse_upstream_url

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose empty body is still announced (``Content-Length: 0``)."""
_COALESCE_MAX = 64 * 1024
"""Bodies up to this size go out in the same write as the head."""


def encode_head(request: UpstreamRequest, default_host: bytes) -> tuple[bytes, bool]:
    """The request head as bytes, and whether the body goes out chunked.

    The target and the headers are written as given; the only additions are
    the ones HTTP/1.1 requires and the caller could not know (``Host``, body
    framing).  A CR or LF inside any of them is refused: it would let a
    client smuggle a second request to slurmrestd.
    """
    body = request.body
    has_host = False
    length: bytes | None = None
    chunked = False
    parts = [request.method.encode("ascii"), b" ", request.target.encode("latin-1"), b" HTTP/1.1"]
    for name, value in request.headers:
        parts += (b"\r\n", name, b": ", value)
        if name == b"host":
            has_host = True
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    lines = len(request.headers)
    if not has_host:
        parts += (b"\r\nhost: ", default_host)
        lines += 1
    if isinstance(body, bytes):
        if length is None and not chunked and (body or request.method in _BODY_METHODS):
            parts += (b"\r\ncontent-length: ", b"%d" % len(body))
            lines += 1
    elif length is None and not chunked:
        parts.append(b"\r\ntransfer-encoding: chunked")
        lines += 1
        chunked = True
    parts.append(b"\r\n\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != lines + 2 or head.count(b"\r") != lines + 2:
        raise ValueError("CR or LF inside the request target or a header")
    return head, chunked


class H1Response:
    """The head of a response; the body stays on the connection until read."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: H1Transport, conn: H1Connection) -> None:
        self._pool = pool
        self._conn: H1Connection | None = conn
        self.status = conn.status
        self.headers: Headers = conn.headers

    def aiter_body(self) -> _Body:
        return _Body(self)

    def body_if_complete(self) -> bytes | None:
        conn = self._conn
        if conn is None or not conn.complete or conn.error is not None:
            return None
        body = conn.take_body() if conn.body else b""
        self._conn = None
        self._pool.release(conn)  # drained: as _Body hands it back
        return body

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class _Body:
    """The body as an async iterator.

    A class rather than an async generator: the event loop registers every
    async generator in a WeakSet (for shutdown), a cost paid per request.
    Buffered bytes are yielded before an error is raised, so a truncated
    body delivers what arrived and then fails.
    """

    __slots__ = ("_resp",)

    def __init__(self, resp: H1Response) -> None:
        self._resp = resp

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        resp = self._resp
        conn = resp._conn
        if conn is None:
            raise StopAsyncIteration
        while True:
            if conn.body:
                return conn.take_body()
            if conn.complete:
                # Drained: hand the connection back now, not at aclose(), so
                # the next request can have it while this answer is still
                # being sent downstream.
                resp._conn = None
                resp._pool.release(conn)
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            if conn.closed:
                raise UpstreamProtocolError("upstream closed the connection mid-response")
            await conn.wait()


class H1Transport:
    """A pool of :class:`H1Connection` to one slurmrestd."""

    def __init__(
        self,
        address: UpstreamAddress,
        *,
        max_connections: int = 64,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        idle_timeout: float = 30.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._address = address
        self._host = address.host_header
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[H1Connection] = []
        self._open = 0
        """Connections open or being opened, idle or busy."""
        self._waiters: deque[asyncio.Future[H1Connection | None]] = deque()
        self._closed = False
        self._read_buffer = read_buffer()
        """Shared by all connections (each read is parsed before the next)."""

    # --- the Transport protocol ---------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> H1Response:
        head, chunked = encode_head(request, self._host)
        retry = may_retry(request)
        conn = await self._acquire()
        while True:
            try:
                await self._exchange(conn, request, head, chunked)
            except StaleConnection:
                self._discard(conn)
                if not retry:
                    raise
                retry = False
                conn = await self._acquire(fresh=True)
            except BaseException:
                self._discard(conn)
                raise
            else:
                return H1Response(self, conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._open -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("transport closed"))

    # --- one exchange -----------------------------------------------------------------

    async def _exchange(
        self, conn: H1Connection, request: UpstreamRequest, head: bytes, chunked: bool
    ) -> None:
        conn.start(request.method == "HEAD")
        body = request.body
        if isinstance(body, bytes):
            if chunked:
                if body:
                    conn.write(head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
                else:
                    conn.write(head + b"0\r\n\r\n")
            elif len(body) <= _COALESCE_MAX:
                conn.write(head + body if body else head)
            else:
                conn.write(head)
                conn.write(body)
        else:
            conn.write(head)
            await self._stream_body(conn, body, chunked)
        await conn.read_head()

    @staticmethod
    async def _stream_body(conn: H1Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        async for chunk in body:
            if conn.head_done or conn.closed:
                # Answered (or gone) before the upload ended: the rest of the
                # body would be read as the next request, so retire it.
                conn.keep_alive = False
                break
            if not chunk:
                continue
            if chunked:
                conn.write(b"%x\r\n" % len(chunk))
                conn.write(chunk)
                conn.write(b"\r\n")
            else:
                conn.write(chunk)
            await conn.drain()
        else:
            if chunked:
                conn.write(b"0\r\n\r\n")

    # --- the pool -----------------------------------------------------------------

    async def _acquire(self, *, fresh: bool = False) -> H1Connection:
        """An idle connection, a new one, or (pool full) the next one released.

        ``fresh`` skips idle connections: after a stale one, its neighbours
        in the pool may be just as dead (slurmrestd restarted)."""
        if self._closed:
            raise UpstreamConnectError("transport closed")
        idle = self._idle
        if not fresh:
            now = -1.0
            while idle:
                conn = idle.pop()
                if (
                    not conn.closed
                    and conn.transport is not None
                    and not conn.transport.is_closing()
                ):
                    if now < 0:
                        now = asyncio.get_running_loop().time()
                    if now - conn.idle_since < self._idle_timeout:
                        return conn
                conn.close()
                self._open -= 1
        elif idle and self._open >= self._max:
            # Make room for the fresh connection by retiring the oldest idle one.
            idle.pop(0).close()
            self._open -= 1
        if self._open < self._max:
            return await self._connect()
        return await self._wait_for_slot()

    async def _wait_for_slot(self) -> H1Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        while True:
            waiter: asyncio.Future[H1Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection (or a free slot) just as we gave up
                    # (timeout or cancellation): pass it on, never leak it.
                    handed = waiter.result()
                    if handed is not None:
                        self.release(handed)
                    else:
                        self._wake_waiter()
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout(
                        "no upstream connection free within the connect timeout", sent=False
                    ) from None
                raise
            if conn is not None:
                return conn
            # A slot was freed (a connection closed): open one, or queue again
            # if someone else took it first.
            if self._open < self._max:
                return await self._connect(deadline)

    async def _connect(self, deadline: float | None = None) -> H1Connection:
        loop = asyncio.get_running_loop()
        self._open += 1
        conn = H1Connection(loop, self._read_timeout, self._read_buffer)
        address = self._address
        try:
            async with asyncio.timeout_at(
                deadline if deadline is not None else loop.time() + self._connect_timeout
            ):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: conn, address.path)
                else:
                    await loop.create_connection(lambda: conn, address.host, address.port)
        except BaseException as exc:
            self._open -= 1
            self._wake_waiter()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout("connect to upstream timed out", sent=False) from exc
            if isinstance(exc, OSError):
                raise UpstreamConnectError(f"cannot connect to upstream: {exc}") from exc
            raise
        return conn

    def release(self, conn: H1Connection) -> None:
        """Take a connection back after an exchange: reuse it or retire it."""
        if conn.reusable and not self._closed:
            conn.finish()
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: H1Connection) -> None:
        if conn.complete:
            conn.close()  # e.g. ``Connection: close`` answers: a clean FIN
        else:
            conn.abort()  # mid-exchange: the framing is lost
        self._open -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        """A slot is free: let the first waiter open a connection."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def create_h1_transport(
    url: str,
    *,
    max_connections: int = 64,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
) -> H1Transport:
    """An :class:`H1Transport` to ``http://host:port`` or ``unix:/path``."""
    return H1Transport(
        parse_upstream_url(url),
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
