"""The seam between the proxy and slurmrestd.

A transport has one job: send one HTTP request upstream and hand back the
status, the headers and the body as a stream.  Everything else (what to cache,
what to retry, what error to show a client) is decided above it.

Exception tree (all derive from :class:`UpstreamError`)::

    UpstreamError                 any failure talking to slurmrestd
    ├── UpstreamConnectError      the request was never sent (refused, DNS,
    │                             socket missing): safe to retry any method
    ├── UpstreamTimeout           connect or read took too long
    ├── UpstreamProtocolError     the peer broke the exchange after the request
    │                             was (maybe) sent: reset, truncated body,
    │                             malformed response; a GET may be retried, a
    │                             write never
    ├── UpstreamBusy              never sent: the proxy's own limit on requests
    │                             in flight to slurmrestd is reached (503)
    ├── UpstreamUnavailable       never sent: the circuit breaker is open after
    │                             repeated upstream failures (fail fast)
    └── UpstreamRefused           never sent: the request cannot go out byte for
                                  byte (e.g. a header that is not valid UTF-8);
                                  the client's doing, not slurmrestd's

``UpstreamError.sent`` tells whether the request may have reached slurmrestd,
which is what decides both retries and invalidation of a failed write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

Headers = list[tuple[bytes, bytes]]
"""Header pairs as on the wire: lower-cased names, raw values, order kept."""


class UpstreamError(Exception):
    """Any failure talking to slurmrestd."""

    sent: bool = True


class UpstreamConnectError(UpstreamError):
    """The request never left this process: retrying cannot duplicate a write."""

    sent = False


class UpstreamTimeout(UpstreamError):
    """Connect or read exceeded its deadline."""

    def __init__(self, message: str = "upstream timed out", *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamProtocolError(UpstreamError):
    """The exchange broke after the request may have been sent."""


class UpstreamRefused(UpstreamError):
    """Refused before sending: the transport cannot send these exact bytes,
    and sending others would break the promise that slurmrestd acts on the
    very request the proxy decided on.  Says nothing about slurmrestd's health
    (the circuit breaker ignores it)."""

    sent = False


class UpstreamBusy(UpstreamError):
    """Refused before sending: too many requests are already in flight to
    slurmrestd (``upstream/protect.py``).  Queueing more would only pile work
    on slurmctld; the client is told to come back (503 + ``Retry-After``)."""

    sent = False

    def __init__(self, message: str = "upstream busy", *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """Refused before sending: the circuit breaker is open because slurmrestd
    failed repeatedly.  Failing fast spares a struggling controller (and lets
    the proxy serve stale entries at once instead of after a timeout)."""

    sent = False

    def __init__(
        self, message: str = "upstream unavailable (circuit open)", *, retry_after: float = 1.0
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class UpstreamRequest:
    """One request to forward.

    ``target`` is the request-target exactly as it goes on the wire (path and
    query, already percent-encoded); transports must not re-encode it.
    ``body`` is either complete bytes or an async stream of chunks (a large
    POST is forwarded without being held whole).
    """

    method: str
    target: str
    headers: Headers
    body: bytes | AsyncIterator[bytes] = b""
    # Whether the transport may retry once on a pooled connection that turned
    # out to be dead.  Only idempotent reads set it.
    retry_on_stale_connection: bool = False
    # Whose share of slurmrestd the request spends, and how much: the
    # identity's user key (never a credential) and the cost in units of 1 to
    # 16 that the rules give it.  Only the fair queue in front of slurmrestd
    # reads them (upstream/protect.py); nothing of them is sent.
    user: str = ""
    cost: int = 1


class UpstreamResponse(Protocol):
    """A response whose head has arrived; the body is read on demand."""

    status: int
    headers: Headers

    def aiter_body(self) -> AsyncIterator[bytes]:
        """Yield the body chunks; raises UpstreamError if it breaks mid-way."""
        ...

    def body_if_complete(self) -> bytes | None:
        """The whole body if all of it has already arrived, else None (then
        read it with :meth:`aiter_body`); may raise UpstreamError as
        :meth:`aiter_body` would.  Asked before reading any of it;
        taking it ends the body as draining :meth:`aiter_body` would.  Why:
        a small answer usually arrives with its head, and an async iteration
        per forwarded request is a measurable share of its cost."""
        ...

    async def aclose(self) -> None:
        """Release the connection (back to the pool if the body was drained)."""
        ...


class Transport(Protocol):
    """Sends requests to one upstream.  Implementations keep their own pool."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; return once the response head has arrived."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


@dataclass(slots=True)
class BufferedResponse:
    """An UpstreamResponse over bytes already in memory (tests, fakes)."""

    status: int
    headers: Headers
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)

    async def aiter_body(self) -> AsyncIterator[bytes]:
        if self.chunks:
            for chunk in self.chunks:
                yield chunk
        elif self.body:
            yield self.body

    def body_if_complete(self) -> bytes | None:
        return None  # read through aiter_body: its chunks are what tests script

    async def aclose(self) -> None:
        return None
