"""A Transport wrapper that protects slurmrestd (and slurmctld behind it).

slurmrestd serves requests with a small thread pool (16 by default) and every
request that reaches slurmctld takes its locks.  A cache in front of it must
not turn a burst of misses, or a struggling controller, into a pile-up:

* **Concurrency limit with a bounded, fair queue.**  At most
  ``max_concurrent`` requests are in flight upstream (from sending to the end
  of the body).  Up to ``max_queue`` more wait, each at most
  ``queue_timeout`` seconds; anything beyond is refused at once with
  :class:`UpstreamBusy` (503 + ``Retry-After``) instead of queueing without
  bound.  The waiting ones are served by cost and by user in turn, not first
  come first served (:class:`Limiter`), so cheap requests are not held
  behind slurmdbd reads and one heavy client cannot starve the others.
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
"""slurmrestd's default thread count: more in flight would only queue there."""
FAILURE_STATUSES = frozenset({502, 503, 504})
"""Answers that mean slurmrestd (or slurmctld/slurmdbd behind it) is failing."""
THROTTLED = b"Rate limit exceeded"
"""slurmctld's word to one user over its rate limit
(``SLURMCTLD_COMMUNICATIONS_BACKOFF``: "Rate limit exceeded, please retry
momentarily", a 502 from slurmrestd 24.11 on, when it does not retry itself;
docs/COMPATIBILITY.md).  The controller is asking that user for less, not
failing: no strike on the breaker (five would fail everyone fast), and the
user's waiting requests go behind everyone else's (:meth:`Limiter.step_back`)."""
_MAX_COOLDOWN = 60.0
_TIMER_SLACK = 0.001
"""Loop timers may fire a clock tick early; a waiter that close to its
deadline has waited long enough."""


class _Waiter:
    """One request waiting for a slot: its deadline, the future it awaits
    and whose it is."""

    __slots__ = ("deadline", "fut", "user")

    def __init__(self, deadline: float, fut: asyncio.Future[None], user: str) -> None:
        self.deadline = deadline
        self.fut = fut
        self.user = user


class _Lane:
    """The waiters of one cost, one FIFO line per user, served round robin.

    ``users`` keeps insertion order: the user served next is the first key,
    and a user served goes to the back (re-inserted) if it still waits."""

    __slots__ = ("cost", "deficit", "users")

    def __init__(self, cost: int) -> None:
        self.cost = cost
        self.deficit = 0
        self.users: dict[str, deque[_Waiter]] = {}

    def pop(self) -> _Waiter | None:
        """The next live waiter, round robin over users; None when none waits.
        Waiters that gave up or timed out are dropped on the way."""
        users = self.users
        while users:
            user = next(iter(users))
            line = users.pop(user)
            while line:
                waiter = line.popleft()
                if not waiter.fut.done():
                    if line:
                        users[user] = line  # to the back of the round
                    return waiter
        return None


QUANTUM = 16
"""Cost units a lane may spend per turn: the largest cost (a request costs
1 to ``QUANTUM``), so every turn serves at least one request."""
_IDLE = _Lane(0)
"""No lane (nobody to serve)."""


class Limiter:
    """A counting semaphore with a bounded, fair queue and a wait deadline.

    Waiting requests are served fairly, by cost and by user, because a
    first-come line lets one slow request class (slurmdbd reads of a second)
    or one heavy client hold everyone else behind it:

    * **By cost: deficit round robin over lanes.**  Each request carries a
      cost (1 to :data:`QUANTUM` units; the rules say how expensive it is,
      :func:`cacheproxy.core.policy.upstream_cost`).  Requests of one cost
      share a lane; lanes take turns, each turn worth :data:`QUANTUM` units,
      so when every lane waits a turn serves 16 pings, 4 lists or one
      slurmdbd read.  A ping arriving behind any number of slurmdbd reads
      waits for at most one of them; an expensive lane still gets its turn.
    * **By user: round robin within a lane.**  Each user has a line in the
      lane; users take turns one request at a time, so a client with a
      hundred queued reads delays another user's read by at most one.

    * **Room for the cheap ones.**  Requests of the highest cost (slurmdbd
      reads) hold at most :attr:`heavy_limit` slots together (all but a
      quarter): slots already held are not taken back, so without this a
      ping arriving while every slot serves a slurmdbd read of a second would
      wait for one of them to end.

    The user is an opaque key (the identity's user, never a credential);
    when there is a free slot and nobody waits, ``acquire`` takes it at once.

    The bounds are as before: at most ``max_queue`` waiters, each at most
    ``timeout`` seconds.  When the queue is full, a newcomer takes the place
    of the newest waiter of the user with the most waiting (at least two
    more than the newcomer's user), who gets the 503 instead: one client
    filling the queue cannot leave everyone else refused.

    Every waiter waits the same ``timeout`` and the deadline line is kept in
    arrival order, so one timer, armed for the oldest waiter, expires them
    all in order (a timeout scope per waiter cost a timer handle and a
    task-cancellation dance on every queued request).  Waiters served,
    expired, dropped or cancelled leave their lines lazily.
    """

    def __init__(self, limit: int, max_queue: int, timeout: float) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.timeout = timeout
        self.heavy_limit = max(1, limit - max(1, limit // 4))
        """Slots requests of the highest cost may hold together: the rest
        (a quarter, at least one) stay for cheaper ones."""
        self._free = limit
        self._heavy = 0
        """Slots held by requests of the highest cost."""
        self._queued = 0
        self._per_user: dict[str, int] = {}
        """Waiting requests by user (those of the user with the most go
        first when the queue is full)."""
        self._deadlines: deque[_Waiter] = deque()
        self._lanes: dict[int, _Lane] = {}
        self._turns: deque[_Lane] = deque()
        """Lanes with waiters, the one whose turn it is first."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return self._queued

    async def acquire(self, user: str = "", cost: int = 1) -> None:
        """Take a slot for ``user``'s request of ``cost`` units, waiting its
        turn if needed; :class:`UpstreamBusy` when the queue is full or the
        wait exceeds the deadline."""
        cost = min(max(cost, 1), QUANTUM)
        if self._free > 0 and not self._queued:
            if cost < QUANTUM:
                self._free -= 1
                return
            if self._heavy < self.heavy_limit:
                self._free -= 1
                self._heavy += 1
                return
        if self.timeout <= 0 or (self._queued >= self.max_queue and not self._make_room(user)):
            raise UpstreamBusy("too many requests in flight to slurmrestd")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiter = _Waiter(loop.time() + self.timeout, fut, user)
        self._enqueue(waiter, user, cost)
        if self._timer is None or self._timer_loop is not loop:
            # (A timer left on another loop, closed since, would never fire.)
            self._timer = loop.call_at(waiter.deadline, self._expire, loop)
            self._timer_loop = loop
        if self._free > 0:
            self._dispatch()  # a slot only the heavy ones may not take
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(cost)  # the slot arrived as we gave up: pass it on
            elif not fut.done() or fut.cancelled():
                fut.cancel()
                self._left(waiter)  # left in its lines, dropped when reached
            raise

    def _enqueue(self, waiter: _Waiter, user: str, cost: int) -> None:
        self._queued += 1
        self._per_user[user] = self._per_user.get(user, 0) + 1
        self._deadlines.append(waiter)
        lane = self._lanes.get(cost)
        if lane is None:
            lane = self._lanes[cost] = _Lane(cost)
        if not lane.users:
            turns = self._turns
            turns.append(lane)
            if len(turns) == 1:
                lane.deficit += QUANTUM  # its turn begins now
        line = lane.users.get(user)
        if line is None:
            lane.users[user] = deque((waiter,))
        else:
            line.append(waiter)

    def _left(self, waiter: _Waiter) -> None:
        """Count ``waiter`` out of the queue (served, expired, gone)."""
        self._queued -= 1
        count = self._per_user[waiter.user] - 1
        if count:
            self._per_user[waiter.user] = count
        else:
            del self._per_user[waiter.user]

    def _make_room(self, user: str) -> bool:
        """The queue is full: drop the newest waiter of the user with the
        most waiting, if that user has at least two more than ``user`` (so a
        heavy client cannot fill the queue and leave everyone else a 503).
        False: ``user`` is (near) the heaviest, and is refused as before."""
        per_user = self._per_user
        heaviest = max(per_user, key=per_user.__getitem__, default=None)
        if heaviest is None or per_user[heaviest] < per_user.get(user, 0) + 2:
            return False
        victim = None
        for lane in self._turns:
            for waiter in reversed(lane.users.get(heaviest, ())):
                if not waiter.fut.done():
                    if victim is None or waiter.deadline > victim.deadline:
                        victim = waiter
                    break
        if victim is None:
            return False
        self._left(victim)
        victim.fut.set_exception(UpstreamBusy("the queue to slurmrestd is full"))
        return True

    def step_back(self, user: str) -> None:
        """``user``'s waiting requests go to the back of their lanes' rounds:
        slurmctld asked that user to slow down, so the others go first."""
        for lane in self._turns:
            line = lane.users.pop(user, None)
            if line is not None:
                lane.users[user] = line

    def release(self, cost: int = 1) -> None:
        """Give back the slot of a request of ``cost`` units."""
        if cost >= QUANTUM:
            self._heavy -= 1
        self._free = min(self._free + 1, self.limit)
        if self._queued:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to the waiters whose turn it is."""
        while self._free > 0 and self._queued:
            lane, waiter = self._next()
            if waiter is None:
                return  # only heavy ones wait, and they hold all they may
            self._free -= 1
            self._left(waiter)
            if lane.cost >= QUANTUM:
                self._heavy += 1
            waiter.fut.set_result(None)

    def _next(self) -> tuple[_Lane, _Waiter | None]:
        """Deficit round robin: the lane whose turn it is serves while its
        deficit covers its cost, then the turn passes (and brings the next
        lane :data:`QUANTUM` units).  The heaviest lane, at its slot limit,
        passes its turn without banking credit."""
        turns = self._turns
        while turns:
            lane = turns[0]
            if lane.cost >= QUANTUM and self._heavy >= self.heavy_limit:
                lane.deficit = 0
                if len(turns) == 1:
                    return lane, None
                self._end_turn(lane, waiting=True)
            elif lane.deficit >= lane.cost:
                waiter = lane.pop()
                if waiter is not None:
                    lane.deficit -= lane.cost
                    if not lane.users:
                        self._end_turn(lane, waiting=False)
                    return lane, waiter
                self._end_turn(lane, waiting=False)  # only dropped waiters were left
            else:
                self._end_turn(lane, waiting=True)
        return _IDLE, None

    def _end_turn(self, lane: _Lane, *, waiting: bool) -> None:
        """Pass the turn: ``lane`` to the back (``waiting``) or out of the
        round, its deficit forfeit (idle lanes bank no credit)."""
        turns = self._turns
        turns.popleft()
        if waiting:
            turns.append(lane)
        else:
            lane.deficit = 0
        if turns:
            turns[0].deficit += QUANTUM

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every waiter whose deadline passed; re-arm for the next one."""
        self._timer = None
        deadlines = self._deadlines
        now = loop.time()
        while deadlines and deadlines[0].deadline <= now + _TIMER_SLACK:
            waiter = deadlines.popleft()
            if not waiter.fut.done():
                self._left(waiter)
                waiter.fut.set_exception(UpstreamBusy("timed out waiting for a slot to slurmrestd"))
        if not self._queued:
            # Nobody waits: drop the lines' leftovers (served, expired, cancelled).
            self._deadlines.clear()
            self._lanes.clear()
            self._turns.clear()
        if deadlines:
            self._timer = loop.call_at(deadlines[0].deadline, self._expire, loop)


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
