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

Each answer uses slurmrestd's JSON error shape and closes the connection.
The limits are class attributes set once per process by :func:`configure`
(uvicorn takes the protocol as a class, also in ``--workers`` children,
where :func:`cacheproxy.hardening.create_app_from_env` calls it).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cacheproxy import errors

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
        self._head_deadline = _NO_DEADLINE

    # -- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    # -- parser callbacks -----------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
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

        Moving a float, not a timer: one TimerHandle per request (create and
        cancel) cost a tenth of the hit path's throughput.  A single timer per
        connection fires at the earliest deadline and re-arms itself when the
        deadline has moved on since.
        """
        if self.head_timeout <= 0:
            return
        self._head_deadline = self.loop.time() + self.head_timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_deadline, self._on_head_timeout)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._head_deadline > now:
            if self._head_deadline != _NO_DEADLINE:
                self._head_timer = self.loop.call_at(self._head_deadline, self._on_head_timeout)
            return
        busy = (self.cycle is not None and not self.cycle.response_complete) or self.pipeline
        if busy:
            return  # a request is being answered: on_response_complete re-arms
        if self._in_head:
            self.transport.write(raw_error(errors.HEAD_TIMEOUT))
        self.transport.close()
