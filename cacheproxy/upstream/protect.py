"""A Transport wrapper that protects slurmrestd (and slurmctld behind it).

slurmrestd serves requests with a small thread pool (``-t``: 20 through
24.11, two per CPU from 25.05), accepts at most 124 connections
(``--max-connections``) and every request that reaches slurmctld takes its
locks.  A cache in front of it must
not turn a burst of misses, or a struggling controller, into a pile-up:

* **Concurrency limit with a bounded queue.**  At most ``max_concurrent``
  requests are in flight upstream (from sending to the end of the body).
  Up to ``max_queue`` more wait, each at most ``queue_timeout`` seconds;
  anything beyond is refused at once with :class:`UpstreamBusy` (503 +
  ``Retry-After``) instead of queueing without bound.
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

import asyncio
import math
import time
from collections import deque
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

if TYPE_CHECKING:
    from cacheproxy.settings import Settings
    from cacheproxy.stats import Stats

DEFAULT_MAX_CONCURRENT = 16
"""Below slurmrestd's default thread count (20 through 24.11) and far below its
connection limit (124): more in flight would only queue there, and past the
limit a new connection waits unaccepted (docs/COMPATIBILITY.md)."""
FAILURE_STATUSES = frozenset({502, 503, 504})
"""Answers that mean slurmrestd (or slurmctld/slurmdbd behind it) is failing."""
_MAX_COOLDOWN = 60.0
_TIMER_SLACK = 0.001
"""Loop timers may fire a clock tick early; a waiter that close to its
deadline has waited long enough."""


class Limiter:
    """A counting semaphore with a bounded FIFO queue and a wait deadline.

    Every waiter waits the same ``timeout`` and joins at the back, so the
    deadlines along the queue never decrease: one timer, armed for the oldest
    waiter, expires them all in order.  (A timeout scope per waiter cost a
    timer handle and a task-cancellation dance on every queued request, a
    measurable share of a forwarded request whenever more than
    ``limit`` are in flight.)
    """

    def __init__(self, limit: int, max_queue: int, timeout: float) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.timeout = timeout
        self._free = limit
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; :class:`UpstreamBusy` when
        the line is full or the wait exceeds the deadline."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        if len(self._waiters) >= self.max_queue or self.timeout <= 0:
            raise UpstreamBusy("too many requests in flight to slurmrestd")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        deadline = loop.time() + self.timeout
        self._waiters.append((deadline, fut))
        if self._timer is None or self._timer_loop is not loop:
            # (A timer left on another loop, closed since, would never fire.)
            self._timer = loop.call_at(deadline, self._expire, loop)
            self._timer_loop = loop
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # the slot arrived as we gave up: pass it on
            elif not fut.done():
                fut.cancel()
                self._forget(fut)
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()[1]
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to the next in line
                return
        self._free = min(self._free + 1, self.limit)

    def _forget(self, fut: asyncio.Future[None]) -> None:
        """Take a cancelled waiter out of the line (rare: O(queue))."""
        for item in self._waiters:
            if item[1] is fut:
                self._waiters.remove(item)
                return

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every waiter whose deadline passed; re-arm for the next one."""
        self._timer = None
        waiters = self._waiters
        now = loop.time()
        while waiters and waiters[0][0] <= now + _TIMER_SLACK:
            fut = waiters.popleft()[1]
            if not fut.done():
                fut.set_exception(UpstreamBusy("timed out waiting for a slot to slurmrestd"))
        if waiters:
            self._timer = loop.call_at(waiters[0][0], self._expire, loop)


class _Guarded:
    """The inner response; its body feeds the breaker and its close frees the slot."""

    __slots__ = ("_inner", "_owner", "_released", "_ticket", "headers", "status")

    def __init__(self, inner: UpstreamResponse, owner: ProtectedTransport, ticket: Ticket) -> None:
        self._inner = inner
        self._owner = owner
        self._ticket = ticket
        self._released = False
        self.status: int = inner.status
        self.headers: Headers = inner.headers

    def aiter_body(self) -> _GuardedBody:
        return _GuardedBody(self._inner.aiter_body(), self._owner.breaker, self._ticket)

    def body_if_complete(self) -> bytes | None:
        return self._inner.body_if_complete()  # complete: nothing broke

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._owner.limiter.release()
        await self._inner.aclose()


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
            await self.limiter.acquire()
        except BaseException as exc:
            breaker.abandon(ticket)
            if isinstance(exc, UpstreamBusy) and self.stats is not None:
                self.stats.upstream_busy += 1
            raise
        try:
            resp = await self.inner.send(request)
        except UpstreamRefused:
            self.limiter.release()
            breaker.abandon(ticket)  # the request's fault: slurmrestd was not asked
            raise
        except UpstreamError as exc:
            self.limiter.release()
            breaker.strike(ticket, exc)
            raise
        except BaseException:
            self.limiter.release()
            breaker.abandon(ticket)
            raise
        if resp.status in FAILURE_STATUSES:
            breaker.strike(ticket, f"answered {resp.status}")
        else:
            breaker.success(ticket)
        return _Guarded(resp, self, ticket)

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
