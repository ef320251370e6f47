"""uvicorn's httptools protocol with limits on the request head.

uvicorn bounds an incomplete request only for h11
(``h11_max_incomplete_event_size``); with httptools (llhttp) the URL and the
headers accumulate without any bound, and a client that trickles a request
head a byte at a time keeps its connection (and its memory) forever, since
the keep-alive timer stops at the first byte.  This subclass adds:

* ``max_url_bytes``: a longer request target is answered 414;
* ``max_head_bytes``: a request line plus headers larger than this is
  answered 431;
* ``head_timeout``: the head of a request must be complete this many seconds
  after the connection opened or the previous response ended; otherwise 408
  (or a silent close when not a byte arrived, like a keep-alive expiry).

uvicorn's keep-alive expiry (``timeout_keep_alive``: an idle connection is
closed that many seconds after its last response) is kept, but runs on the
same per-connection timer: uvicorn arms a new timer after every response
and cancels it at the next request's first byte, about 2% of a cache hit's
instructions.

Each answer uses slurmrestd's JSON error shape and closes the connection.
The limits are class attributes set once per process by :func:`configure`
(uvicorn takes the protocol as a class, also in ``--workers`` children,
where :func:`cacheproxy.http.hardening.create_app_from_env` calls it).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cacheproxy.core import errors

DEFAULT_MAX_URL_BYTES = 8192
DEFAULT_MAX_HEAD_BYTES = 32 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
_NO_DEADLINE = float("inf")


class _HeadLimit(Exception):
    """Raised inside a parser callback to stop parsing an oversized head."""


def configure(
    *,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
) -> None:
    LimitedHttpToolsProtocol.max_url_bytes = max_url_bytes
    LimitedHttpToolsProtocol.max_head_bytes = max_head_bytes
    LimitedHttpToolsProtocol.head_timeout = head_timeout


def raw_error(err: errors.ProxyError, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A whole response in slurmrestd's error shape that closes the
    connection, for answers written straight to the socket."""
    _, headers, body = errors.error_response(err, [(b"connection", b"close"), *(extra or ())])
    head = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return STATUS_LINE[err.status] + head + b"\r\n" + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring."""

    max_url_bytes: ClassVar[int] = DEFAULT_MAX_URL_BYTES
    max_head_bytes: ClassVar[int] = DEFAULT_MAX_HEAD_BYTES
    head_timeout: ClassVar[float] = DEFAULT_HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = False
        self._refusal: errors.ProxyError | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._timer_at = _NO_DEADLINE
        self._head_deadline = _NO_DEADLINE
        """When the head being received (or the next one) must be complete."""
        self._idle_deadline = _NO_DEADLINE
        """When an idle keep-alive connection is closed (no byte of a next
        request by then)."""

    # -- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """uvicorn's, with its keep-alive timer folded into the head timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        now = self.loop.time()
        if self.head_timeout > 0:
            self._head_deadline = now + self.head_timeout
        if self.pipeline:  # the next pipelined request, in order
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = now + self.timeout_keep_alive
        self._ensure_timer()

    # -- parser callbacks -----------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        self._idle_deadline = _NO_DEADLINE
        if self._head_deadline == _NO_DEADLINE:
            self._arm_head_timer()

    # (The counting is inlined: these run for every header of every request.)
    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.max_url_bytes:
            self._refuse(errors.URL_TOO_LONG)
        self._head_bytes += len(url)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(errors.HEAD_TOO_LARGE)
        HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            self._refuse(errors.HEAD_TOO_LARGE)
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_deadline = _NO_DEADLINE  # the head is in: stop its timer
        HttpToolsProtocol.on_headers_complete(self)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; ours when a limit caused it."""
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
            return
        self.transport.write(raw_error(refusal))
        self.transport.close()

    # -- internals ------------------------------------------------------------
    def _refuse(self, err: errors.ProxyError) -> None:
        self._refusal = err
        raise _HeadLimit(err.error)

    def _arm_head_timer(self) -> None:
        """Set the deadline for the next head.

        Moving floats, not timers: one TimerHandle per request (create and
        cancel) cost a tenth of the hit path's throughput.  A single timer per
        connection fires at the earliest deadline and re-arms itself for the
        next one; it is re-armed early only when a deadline comes nearer.
        """
        if self.head_timeout > 0:
            self._head_deadline = self.loop.time() + self.head_timeout
            self._ensure_timer()

    def _ensure_timer(self) -> None:
        deadline = min(self._head_deadline, self._idle_deadline)
        if deadline == _NO_DEADLINE:
            return
        timer = self._head_timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._head_timer = self.loop.call_at(deadline, self._on_deadline)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_deadline(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        busy = (self.cycle is not None and not self.cycle.response_complete) or self.pipeline
        if busy:
            return  # a request is being answered: on_response_complete re-arms
        now = self.loop.time()
        if self._in_head:
            if self._head_deadline <= now:
                self.transport.write(raw_error(errors.HEAD_TIMEOUT))
                self.transport.close()
                return
        elif min(self._head_deadline, self._idle_deadline) <= now:
            self.transport.close()  # idle: a silent close, as uvicorn's keep-alive expiry
            return
        self._ensure_timer()
