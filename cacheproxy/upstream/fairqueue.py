"""The fair queue in front of slurmrestd: a counting semaphore whose waiters
are served by cost and by user in turn (see :class:`Limiter`).

Mechanism only: what a request costs is policy
(:func:`cacheproxy.core.policy.upstream_cost`, from the rules), whose turn it
takes is the identity's user key, and :mod:`cacheproxy.upstream.protect`
puts the queue in front of the transport.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cacheproxy.upstream.base import UpstreamBusy

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
