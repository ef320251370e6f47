"""One request on a connection, and its response written on the wire.

The server protocol (:mod:`cacheproxy.http.server`) makes a :class:`Cycle`
for each request head it parses; the request's body arrives into it as the
parser delivers it.  Its answer goes out one of two ways:

* whole (:meth:`Cycle.write_whole`): a response the pipeline completed
  (:data:`~cacheproxy.http.respond.Response`: status, headers, body), written
  in one system call, with no task and no ASGI message;
* through ASGI (:meth:`Cycle.run`): anything else (a request body to read, a
  response to stream, an application that is not the pipeline) runs with
  this cycle's :meth:`receive` and :meth:`send`, as the ASGI HTTP
  specification (2.3) has them: ``http.request`` messages with the body as it
  arrives (``100 Continue`` sent first when the client asked), then
  ``http.disconnect`` once the client is gone or the response complete;
  ``http.response.start`` and ``http.response.body``, framed by the
  response's Content-Length or else chunked, no body for HEAD, 204 and 304.

Both write the same head: the status line, the server's default headers
(``Date``, ``Server``: uvicorn's settings), the response's headers in lower
case, and ``Connection: close`` when the connection ends with this response
(the client asked, HTTP/1.0, the server is shutting down, or the client sent
``Expect: 100-continue`` and its body was neither asked for nor received: the
bytes that follow could be that body or a next request, so the connection
closes rather than guess).
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from cacheproxy.http.respond import Message, Receive, Response, Send

log = logging.getLogger("cacheproxy")

HIGH_WATER = 64 * 1024
"""Request body bytes held before the connection stops reading (until the
application receives them)."""

_JOIN_BELOW = 16 * 1024
"""Bodies up to this size are joined to the head (one buffer is the cheapest
write); larger ones go out beside it in the same system call (``writev``),
uncopied (a hit copies no body)."""

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
"""What a header an application sends may not contain (a CR or LF would
split the response)."""

_INTERNAL_ERROR = (
    500,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
    b"Internal Server Error",
)
"""The answer when an application fails before it started its response (the
pipeline never does: its safety net answers in slurmrestd's shape)."""


def _status_line(status: int, phrases: Mapping[int, str] | None = None) -> bytes:
    phrase = (phrases or {}).get(status)
    if phrase is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())


def status_lines(phrases: Mapping[int, str] | None = None) -> dict[int, bytes]:
    """Every status line, with the standard reason phrases or ``phrases``."""
    return {status: _status_line(status, phrases) for status in range(100, 600)}


STATUS_LINES = status_lines()
"""Our own table, from the standard library's ``http.HTTPStatus`` (uvicorn's
module-level table is neither read nor patched)."""


class Connection(Protocol):
    """What a cycle needs of its connection (:class:`~cacheproxy.http.server.HttpServer`)."""

    transport: asyncio.Transport
    write_paused: bool
    status_lines: Mapping[int, bytes]

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def drain(self) -> None: ...

    def response_done(self, cycle: Cycle) -> None: ...


class Cycle:
    """One request and its response (see the module docstring).

    The fields below are class-level defaults until set: a cycle is made
    for every request, most of them answered whole at once."""

    body: bytearray | None = None
    """Request body received and not yet handed to the application."""
    more_body: bool = True
    """The request body is still arriving."""
    body_handed: bool = False
    """The application received the whole body."""
    wakeup: asyncio.Event | None = None
    """Set while :meth:`receive` waits for body or disconnect."""
    started: bool = False
    complete: bool = False
    disconnected: bool = False
    """The client went away before the response was complete."""
    chunked: bool = False
    remaining: int = 0
    """Body bytes the response's Content-Length still promises."""
    head_only: bool = False
    """The response has no body on the wire (HEAD, 204, 304)."""
    refusal: bytes | None = None
    """A whole raw response that answers this request and closes the
    connection (a head limit, a malformed request, over the concurrency
    limit), written in the request's turn."""

    def __init__(
        self, conn: Connection, scope: dict[str, object], keep_alive: bool, expect: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        """The client waits for ``100 Continue`` before it sends the body."""

    # -- the request body, from the parser ------------------------------------
    def feed(self, data: bytes) -> None:
        if self.complete:
            return  # answered: the rest of the body is read and dropped
        if self.body is None:
            self.body = bytearray(data)
        else:
            self.body += data
        if len(self.body) > HIGH_WATER:
            self.conn.pause_reading()
        if self.wakeup is not None:
            self.wakeup.set()

    def end(self) -> None:
        self.more_body = False
        if self.wakeup is not None:
            self.wakeup.set()

    def lost(self) -> None:
        """The connection is gone."""
        if not self.complete:
            self.disconnected = True
        if self.wakeup is not None:
            self.wakeup.set()

    # -- a whole response -------------------------------------------------------
    def write_whole(self, response: Response) -> bool:
        """Write ``response`` at once; False (nothing written) when it has
        no Content-Length, so that it must be framed by :meth:`send`."""
        status, headers, body = response
        parts = [self.conn.status_lines.get(status) or _status_line(status)]
        for name, value in self.conn.default_headers:
            parts += (name, b": ", value, b"\r\n")
        sized = closes = False
        for name, value in headers:  # lower case, as ASGI's send writes them
            name = name.lower()
            if name == b"content-length":
                sized = True
            elif name == b"connection":
                closes = self._closes(value)
            parts += (name, b": ", value, b"\r\n")
        if not sized and status not in (204, 304):
            return False
        if self.expect_continue and self.more_body:
            self.keep_alive = False  # its body was never asked for: see the module docstring
        if not self.keep_alive and not closes:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        transport = self.conn.transport
        if self.scope["method"] == "HEAD" or not body:
            transport.write(b"".join(parts))
        elif len(body) <= _JOIN_BELOW:
            parts.append(body)
            transport.write(b"".join(parts))
        else:  # one writev, the body uncopied
            transport.writelines((b"".join(parts), body))
        self.started = self.complete = True
        if not self.keep_alive:
            transport.close()
        self.conn.response_done(self)
        return True

    def _closes(self, connection: bytes) -> bool:
        if b"close" in [token.strip() for token in connection.lower().split(b",")]:
            self.keep_alive = False
            return True
        return False

    # -- the ASGI cycle -----------------------------------------------------------
    async def run(self, app: Callable[[Receive, Send], Awaitable[None]]) -> None:
        """Run ``app`` (an ASGI application bound to this request's scope)
        and end the response however it ends."""
        try:
            await app(self.receive, self.send)
        except asyncio.CancelledError:
            self.conn.transport.close()  # the server gave up waiting (shutdown)
            raise
        except Exception:
            log.exception("exception in the ASGI application")
            if not self.started:
                self.keep_alive = False
                await self.send_whole(_INTERNAL_ERROR)
            else:
                self.conn.transport.close()  # a cut response, never a wrong one
        else:
            if not self.started and not self.disconnected:
                log.error("the ASGI application returned without a response")
                self.keep_alive = False
                await self.send_whole(_INTERNAL_ERROR)
            elif not self.complete and not self.disconnected:
                log.error("the ASGI application returned before its response was complete")
                self.conn.transport.close()

    async def send_whole(self, response: Response) -> None:
        status, headers, body = response
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def receive(self) -> Message:
        transport = self.conn.transport
        if self.expect_continue:
            self.expect_continue = False
            if not transport.is_closing():
                transport.write(_CONTINUE)
        if not (self.disconnected or self.complete) and (
            self.body_handed or (self.more_body and not self.body)
        ):
            self.conn.resume_reading()
            wakeup = self.wakeup = asyncio.Event()
            await wakeup.wait()
            self.wakeup = None
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        body, self.body = self.body, None
        self.body_handed = not self.more_body
        return {"type": "http.request", "body": bytes(body or b""), "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return  # the client is gone: the application finds out by receive
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self._start(message["status"], message.get("headers", ()))
        elif not self.complete:
            if kind != "http.response.body":
                raise RuntimeError(f"expected 'http.response.body', got {kind!r}")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"{kind!r} sent after the response was complete")

    def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.started = True
        if self.expect_continue and self.more_body:
            self.keep_alive = False  # its body was never asked for: see the module docstring
        self.expect_continue = False
        parts = [self.conn.status_lines.get(status) or _status_line(status)]
        length: int | None = None
        closes = False
        for name, value in (*self.conn.default_headers, *headers):
            if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                raise RuntimeError("invalid character in a response header")
            name = name.lower()
            if name == b"content-length" and length is None and not self.chunked:
                length = int(value)
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.chunked, length = True, None
            elif name == b"connection":
                closes = self._closes(value) or closes
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closes:
            parts.append(_CLOSE)
        bodiless = self.scope["method"] == "HEAD" or status in (204, 304)
        if length is None and not self.chunked and not bodiless:
            self.chunked = True
            parts.append(_CHUNKED)
        self.remaining = 0 if bodiless else (length or 0)
        self.head_only = bodiless
        parts.append(b"\r\n")
        self.conn.transport.write(b"".join(parts))

    def _body(self, body: bytes, more: bool) -> None:
        transport = self.conn.transport
        if self.head_only:
            pass  # no body on the wire (its length is the Content-Length of a GET)
        elif self.chunked:
            if body:
                transport.write(b"%x\r\n%s\r\n" % (len(body), body))
            if not more:
                transport.write(b"0\r\n\r\n")
        else:
            if len(body) > self.remaining:
                raise RuntimeError("response body longer than its Content-Length")
            self.remaining -= len(body)
            if body:
                transport.write(body)
        if more:
            return
        if self.remaining:
            raise RuntimeError("response body shorter than its Content-Length")
        self.complete = True
        if self.wakeup is not None:
            self.wakeup.set()
        if not self.keep_alive:
            transport.close()
        self.conn.response_done(self)
