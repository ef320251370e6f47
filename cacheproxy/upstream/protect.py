"""A Transport wrapper that protects slurmrestd (and slurmctld behind it).

slurmrestd serves requests with a small thread pool (``-t``: 20 through
24.11, two per CPU from 25.05), accepts at most 124 connections
(``--max-connections``) and every request that reaches slurmctld takes its
locks.  A cache in front of it must
not turn a burst of misses, or a struggling controller, into a pile-up:

* **Concurrency limit with a bounded, fair queue.**  At most
  ``max_concurrent`` requests are in flight upstream (from sending to the end
  of the body).  Up to ``max_queue`` more wait, each at most
  ``queue_timeout`` seconds; anything beyond is refused at once with
  :class:`UpstreamBusy` (503 + ``Retry-After``) instead of queueing without
  bound.  The waiting ones are served by cost and by user in turn, not
  first come first served (:mod:`cacheproxy.upstream.fairqueue`), so cheap
  requests are not held behind slurmdbd reads and one heavy client cannot
  starve the others.
* **Circuit breaker.**  After ``breaker_failures`` consecutive failures
  (connect errors, timeouts, broken exchanges, 502/503/504 answers) calls fail
  fast with :class:`UpstreamUnavailable` for ``breaker_cooldown`` seconds, so
  clients get an answer (or a stale entry) at once instead of after a timeout
  and the controller gets room to recover.  Then one request is let through as
  a *probe*: only its success closes the circuit; its failure re-opens it with
  a doubled cool-down (bounded).  The breaker is the one
  :class:`~cacheproxy.circuit.CircuitBreaker` the Redis tier uses too; every
  upstream failure is a strike.

It wraps any :class:`~cacheproxy.upstream.base.Transport` and is one itself,
so the proxy does not know it is there.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from cacheproxy.circuit import CircuitBreaker, Ticket
from cacheproxy.upstream.base import (
    Headers,
    Transport,
    UpstreamBusy,
    UpstreamError,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamUnavailable,
)
from cacheproxy.upstream.fairqueue import Limiter

if TYPE_CHECKING:
    from cacheproxy.settings import Settings
    from cacheproxy.stats import Stats

DEFAULT_MAX_CONCURRENT = 16
"""Below slurmrestd's default thread count (20 through 24.11) and far below its
connection limit (124): more in flight would only queue there, and past the
limit a new connection waits unaccepted (docs/COMPATIBILITY.md)."""
FAILURE_STATUSES = frozenset({502, 503, 504})
"""Answers that mean slurmrestd (or slurmctld/slurmdbd behind it) is failing."""
THROTTLED = b"Rate limit exceeded"
"""slurmctld's word to one user over its rate limit
(``SLURMCTLD_COMMUNICATIONS_BACKOFF``: "Rate limit exceeded, please retry
momentarily", a 502 from slurmrestd 24.11 on, when it does not retry itself;
docs/COMPATIBILITY.md).  The controller is asking that user for less, not
failing: no strike on the breaker (five would fail everyone fast), and the
user's waiting requests go behind everyone else's
(:meth:`~cacheproxy.upstream.fairqueue.Limiter.step_back`)."""
_MAX_COOLDOWN = 60.0


class _Guarded:
    """The inner response; its body feeds the breaker and its close frees the slot."""

    __slots__ = (
        "_cost",
        "_inner",
        "_owner",
        "_released",
        "_ticket",
        "_whole",
        "headers",
        "status",
    )

    def __init__(
        self,
        inner: UpstreamResponse,
        owner: ProtectedTransport,
        ticket: Ticket,
        cost: int,
        whole: bytes | None = None,
    ) -> None:
        self._inner = inner
        self._owner = owner
        self._ticket = ticket
        self._cost = cost
        self._whole = whole
        """The body, when it was taken already (to read a 502's reason)."""
        self._released = False
        self.status: int = inner.status
        self.headers: Headers = inner.headers

    def aiter_body(self) -> AsyncIterator[bytes]:
        if self._whole is not None:
            return _once(self._whole)
        return _GuardedBody(self._inner.aiter_body(), self._owner.breaker, self._ticket)

    def body_if_complete(self) -> bytes | None:
        if self._whole is not None:
            return self._whole
        return self._inner.body_if_complete()  # complete: nothing broke

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._owner.limiter.release(self._cost)
        await self._inner.aclose()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


class _GuardedBody:
    """The inner body, telling the breaker when it breaks.

    A class rather than an async generator: the loop registers every async
    generator for shutdown, and each chunk would cross one more generator
    frame, costs paid on every forwarded request.
    """

    __slots__ = ("_breaker", "_chunks", "_ticket")

    def __init__(
        self, chunks: AsyncIterator[bytes], breaker: CircuitBreaker, ticket: Ticket
    ) -> None:
        self._chunks = chunks.__aiter__()
        self._breaker = breaker
        self._ticket = ticket

    def __aiter__(self) -> _GuardedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except UpstreamError as exc:
            self._breaker.strike(self._ticket, exc)
            raise


class ProtectedTransport:
    """A :class:`Transport` that limits concurrency and fails fast when the
    upstream is failing.  See the module docstring for why."""

    def __init__(
        self,
        inner: Transport,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_queue: int = 128,
        queue_timeout: float = 10.0,
        breaker_failures: int = 5,
        breaker_cooldown: float = 5.0,
        stats: Stats | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.limiter = Limiter(max_concurrent, max_queue, queue_timeout)
        self.breaker = CircuitBreaker(
            "slurmrestd",
            threshold=breaker_failures,
            cooldown=breaker_cooldown,
            max_cooldown=_MAX_COOLDOWN,
            monotonic=monotonic,
        )
        self.stats = stats

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        breaker = self.breaker
        ticket = breaker.enter()
        if ticket is None:
            if self.stats is not None:
                self.stats.breaker_rejected += 1
            wait = breaker.retry_after()
            raise UpstreamUnavailable(retry_after=float(max(1, math.ceil(wait))))
        try:
            await self.limiter.acquire(request.user, request.cost)
        except BaseException as exc:
            breaker.abandon(ticket)
            if isinstance(exc, UpstreamBusy) and self.stats is not None:
                self.stats.upstream_busy += 1
            raise
        try:
            resp = await self.inner.send(request)
        except UpstreamRefused:
            self.limiter.release(request.cost)
            breaker.abandon(ticket)  # the request's fault: slurmrestd was not asked
            raise
        except UpstreamError as exc:
            self.limiter.release(request.cost)
            breaker.strike(ticket, exc)
            raise
        except BaseException:
            self.limiter.release(request.cost)
            breaker.abandon(ticket)
            raise
        if resp.status not in FAILURE_STATUSES:
            breaker.success(ticket)
            return _Guarded(resp, self, ticket, request.cost)
        whole = None
        if resp.status == 502:
            try:
                whole = resp.body_if_complete()  # an error answer: small, usually in
            except UpstreamError as exc:
                self.limiter.release(request.cost)
                breaker.strike(ticket, exc)
                await resp.aclose()
                raise
            if whole is not None and THROTTLED in whole:
                breaker.success(ticket)  # slurmctld answered: it is alive
                self.limiter.step_back(request.user)
                if self.stats is not None:
                    self.stats.upstream_throttled += 1
                return _Guarded(resp, self, ticket, request.cost, whole)
        breaker.strike(ticket, f"answered {resp.status}")
        return _Guarded(resp, self, ticket, request.cost, whole)

    async def aclose(self) -> None:
        await self.inner.aclose()


def from_settings(inner: Transport, s: Settings, stats: Stats | None = None) -> ProtectedTransport:
    """``inner`` behind the protection the settings ask for."""
    return ProtectedTransport(
        inner,
        max_concurrent=s.upstream_concurrency,
        max_queue=s.upstream_queue,
        queue_timeout=s.upstream_queue_timeout,
        breaker_failures=s.breaker_failures,
        breaker_cooldown=s.breaker_cooldown,
        stats=stats,
    )
