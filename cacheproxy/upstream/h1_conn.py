"""One HTTP/1.1 client connection: an asyncio protocol around httptools.

This is the whole per-request cost of the lean transport, so it does the
minimum: callbacks from llhttp append to plain attributes, and the single
coroutine waiting on the connection (``send`` for the head, ``aiter_body`` for
the body) is woken through one future.  There are no tasks, no streams and no
per-chunk objects beyond the bytes themselves.

One exchange at a time (no pipelining); the pool (``h1_transport``) hands a
connection to one request and takes it back when the response is complete.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from cacheproxy.upstream.base import (
    Headers,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

HIGH_WATER = 512 * 1024
"""Unread body bytes at which reading from slurmrestd pauses: a slow client
must not make the proxy buffer a whole large response."""

MAX_HEADERS = 256
"""More response headers than this is a broken (or hostile) upstream."""

READ_BUFFER_SIZE = 256 * 1024
"""Bytes read from the socket at most at once (a 200 KiB answer in one read)."""


def read_buffer(size: int = READ_BUFFER_SIZE) -> memoryview:
    """A buffer the socket is read into, shareable by every connection of
    one event loop: each read is parsed before the loop reads again, and the
    parser copies out everything it hands on."""
    return memoryview(bytearray(size))


class StaleConnection(UpstreamProtocolError):
    """A reused keep-alive connection closed before any byte of the response:
    the server had (almost surely) dropped it while idle."""


class H1Connection(asyncio.BufferedProtocol):
    """A keep-alive connection to slurmrestd and the state of its exchange.

    A buffered protocol: the loop reads straight into ``buffer`` instead of
    into a fresh ``bytes`` per read that the parser then copies again; a
    200 KiB answer is copied once in user space instead of twice.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        buffer: memoryview | None = None,
    ) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._buffer = buffer if buffer is not None else read_buffer(64 * 1024)
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchanges = 0
        """Exchanges completed on this connection (0: fresh)."""
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._reset(head_only=False)
        self.active = False

    def _reset(self, *, head_only: bool) -> None:
        self.active = True
        self.head_only = head_only
        self.got_bytes = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.until_eof = False
        self.informational = False
        self.status = 0
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.buffered = 0
        self.error: UpstreamError | None = None

    # --- asyncio protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if not self.active or self.complete:
            # Bytes nobody asked for: the framing is lost; never reuse this.
            self.abort(UpstreamProtocolError("upstream sent data outside a response"))
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(UpstreamProtocolError(f"malformed response from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.active and not self.complete and self.error is None:
            if self.head_done and self.until_eof and exc is None:
                self.complete = True  # a close-delimited body ends with the connection
            elif not self.got_bytes and self.exchanges:
                self.error = StaleConnection("pooled connection closed before the response")
            else:
                what = "reset" if exc is not None else "closed"
                self.error = UpstreamProtocolError(f"upstream {what} the connection mid-response")
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- httptools callbacks ---------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= MAX_HEADERS:
            raise UpstreamProtocolError("too many response headers")
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamProtocolError("upstream switched protocols")
            self.informational = True  # 100 Continue & co: the real answer follows
            self.headers = []
            return
        self.status = status
        self.head_done = True
        self.keep_alive = bool(self._parser.should_keep_alive())
        if self.head_only:
            # llhttp cannot be told a HEAD answer has no body; end here and
            # never reuse the connection (its parser expects body bytes).
            self.complete = True
            self.keep_alive = False
        elif status != 204 and status != 304:
            framed = False
            for name, value in self.headers:
                if name == b"content-length" or (
                    name == b"transfer-encoding" and b"chunked" in value.lower()
                ):
                    framed = True
                    break
            self.until_eof = not framed
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered >= HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self._wake()

    # --- used by the transport ---------------------------------------------------------

    def start(self, head_only: bool) -> None:
        """Begin an exchange on this (idle or new) connection."""
        self._reset(head_only=head_only)

    def finish(self) -> None:
        """The exchange is over and the connection goes back to the pool."""
        self.active = False
        self.exchanges += 1
        self.body = []
        self.headers = []

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and not self.closed
            and self.error is None
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def abort(self, error: UpstreamError | None = None) -> None:
        """Drop the connection now (RST); record why for whoever waits."""
        if error is not None and self.error is None and not self.complete:
            self.error = error
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def close(self) -> None:
        """Drop the connection (FIN after pending writes)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise self._write_error()
        self.transport.write(data)

    def _write_error(self) -> UpstreamError:
        if self.error is not None:
            return self.error
        if not self.got_bytes and self.exchanges:
            return StaleConnection("pooled connection closed before the request was written")
        return UpstreamProtocolError("upstream closed the connection while sending")

    async def drain(self) -> None:
        """Wait until the socket takes more data (streamed request bodies)."""
        if not self._write_paused or self.closed:
            return
        self._drain = self._loop.create_future()
        timer = self._loop.call_later(self._read_timeout, self._drain_timeout)
        try:
            await self._drain
        finally:
            timer.cancel()
        if self.closed and self.error is not None:
            raise self.error

    def _drain_timeout(self) -> None:
        self.abort(UpstreamTimeout("upstream stopped reading the request body"))
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def wait(self) -> None:
        """Wait for the next event (head, body bytes, end, error) or time out.

        One lazily re-armed timer per connection instead of a timer per
        wait: most waits end in microseconds, and creating and cancelling a
        timer handle each time was a measurable share of a forwarded request.
        """
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._deadline = loop.time() + self._read_timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self.closed:
            return  # nobody waits now; the next wait() arms a new timer
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self.abort(UpstreamTimeout("upstream read timed out"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            if self.closed and not self.complete:
                raise self._write_error()
            await self.wait()

    def take_body(self) -> bytes:
        """Everything buffered, as one chunk; resumes reading if it paused."""
        body = self.body
        chunk = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        return chunk
