"""A scriptable raw HTTP/1.1 server for transport tests.

Real servers are too polite to test a client: they never close a keep-alive
connection at the worst moment, truncate a body, or answer with a bare status
line.  This one reads each request (head and body, streamed and hashed, never
held whole when large) and hands it to a per-test handler that writes whatever
bytes it likes and decides whether the connection lives on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

KEEP_BODY_MAX = 1 << 20
"""Bodies up to this size are kept for assertions; larger ones only hashed."""


@dataclass
class Received:
    """One request as it arrived on the wire."""

    conn_id: int
    index_on_conn: int
    method: str
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # names as sent, not lower-cased
    body: bytes = b""
    body_len: int = 0
    body_sha256: str = field(default_factory=lambda: hashlib.sha256().hexdigest())

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Conn:
    """The server side of one connection, as handlers see it."""

    def __init__(self, conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.requests = 0

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        reason: bytes = b"OK",
    ) -> None:
        """A well-formed Content-Length response."""
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for k, v in headers or []:
            head.append(k + b": " + v + b"\r\n")
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        await self.write(b"".join(head) + body)

    def close(self) -> None:
        """Close after the handler returns (FIN)."""
        self.closed = True

    def abort(self) -> None:
        """Reset the connection now (RST where the OS allows it)."""
        self.closed = True
        transport = self.writer.transport
        transport.abort()


Handler = Callable[[Received, Conn], Awaitable[None]]


async def default_handler(req: Received, conn: Conn) -> None:
    await conn.respond(200, b"hello")


class RawServer:
    """Serves on 127.0.0.1:<free port> or a UNIX socket; records every request."""

    def __init__(self, handler: Handler = default_handler) -> None:
        self.handler = handler
        self.received: list[Received] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._arrived = asyncio.Event()
        self._closed = asyncio.Event()
        self.closed_connections = 0
        self.url = ""

    async def start(self, *, uds: str | None = None) -> str:
        if uds is not None:
            self._server = await asyncio.start_unix_server(self._on_conn, path=uds)
            self.url = f"unix:{uds}"
        else:
            self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for_closed(self, n: int) -> None:
        """Until ``n`` connections have been closed by this side."""
        while self.closed_connections < n:
            self._closed.clear()
            await self._closed.wait()

    async def wait_for_requests(self, n: int) -> None:
        """Until ``n`` requests have arrived (no sleeps: woken per request)."""
        while len(self.received) < n:
            self._arrived.clear()
            await self._arrived.wait()

    def count(self, method: str) -> int:
        return sum(1 for r in self.received if r.method == method)

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn = Conn(self.connections, reader, writer)
        try:
            while not conn.closed:
                req = await read_request(reader, conn)
                if req is None:
                    break
                self.received.append(req)
                self._arrived.set()
                conn.requests += 1
                await self.handler(req, conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels handlers stuck on purpose; ending quietly keeps
            # asyncio's stream machinery from logging the cancellation.
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.closed_connections += 1
            self._closed.set()


async def read_request(reader: asyncio.StreamReader, conn: Conn) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, version = lines[0].split(b" ", 2)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    req = Received(conn.id, conn.requests, method.decode(), target, version, headers)
    digest = hashlib.sha256()
    kept: list[bytes] = []

    def take(chunk: bytes) -> None:
        digest.update(chunk)
        req.body_len += len(chunk)
        if req.body_len <= KEEP_BODY_MAX:
            kept.append(chunk)

    length = req.header(b"content-length")
    if b"chunked" in (req.header(b"transfer-encoding") or b"").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            while size:
                chunk = await reader.read(min(size, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", size)
                size -= len(chunk)
                take(chunk)
            await reader.readexactly(2)
            if int(size_line.split(b";")[0].strip(), 16) == 0:
                break
    elif length is not None:
        remaining = int(length)
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
            take(chunk)
    req.body = b"".join(kept) if req.body_len <= KEEP_BODY_MAX else b""
    req.body_sha256 = digest.hexdigest()
    return req
