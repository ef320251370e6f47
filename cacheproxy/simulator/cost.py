"""How long a real slurmrestd 22.05 takes, modelled with sleeps (never CPU burn).

A real slurmctld serialises most RPC work behind its locks, so the daemon is
a capacity-limited server: latency at concurrency 1 is the service time
(about 2 ms), and beyond a few hundred requests/s requests queue.  Measured
on a real 22.05 (shared/notes/real-slurmrestd-22.05.md): p50 2 ms at
concurrency 1, about 15 ms at 8, 60-90 ms at 32 (p95 about 300 ms), 300-450
requests/s in all.

The model:

* :class:`ControllerLock`: one global reader-writer lock.  Reads share it up
  to ``read_parallelism`` holders, writes are exclusive and preferred (as
  slurmctld's locks are).  Waiting readers are admitted in *random* order,
  not FIFO: that is what gives the long tail the real daemon shows
  (p95 several times p50 under load) at the same mean.
* service time = (base + per item) x log-normal jitter x a contention factor
  that grows with the queue (lock hand-over is not free under load);
* slurmrestd then renders outside the lock on a few worker threads
  (``render_threads``), costing time per item returned;
* slurmdbd calls do not touch the controller lock: they take 90 ms to 1.3 s
  on a separate pool (``dbd_parallelism``).

Timers fire late by up to a millisecond, so hold times are scheduled in
*virtual time*: a holder's successor starts when the holder was due to end,
not when its timer actually fired.  Lateness therefore never accumulates and
the capacity stays what the parameters say.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cacheproxy.simulator.config import CostParams
from cacheproxy.simulator.stats import Stats

R = TypeVar("R")

#: slurmdbd service time ranges per route kind, seconds (measured on 22.05).
DBD_COST: dict[str, tuple[float, float]] = {
    "config": (1.05, 1.3),
    "jobs": (0.15, 0.36),
    "job": (0.09, 0.15),
    "diag": (0.09, 0.12),
    "write": (0.1, 0.2),
    "default": (0.09, 0.15),
}


@dataclass
class _Waiter:
    exclusive: bool
    arrival: float
    future: asyncio.Future[float]


class ControllerLock:
    """Reader-writer lock with bounded readers, writer preference, random admission."""

    def __init__(self, read_parallelism: int, rng: random.Random) -> None:
        self.read_parallelism = max(1, read_parallelism)
        self.rng = rng
        self.readers = 0
        self.writer = False
        self.waiting: list[_Waiter] = []
        self._last_release = 0.0

    def _free_for(self, exclusive: bool) -> bool:
        if exclusive:
            return not self.writer and self.readers == 0
        return not self.writer and self.readers < self.read_parallelism

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self.writer = True
        else:
            self.readers += 1

    async def acquire(self, exclusive: bool) -> float:
        """Wait for the lock; returns the virtual time at which the hold starts."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self.waiting and self._free_for(exclusive):
            self._take(exclusive)
            return now
        waiter = _Waiter(exclusive, now, loop.create_future())
        self.waiting.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(exclusive, loop.time())
            elif waiter in self.waiting:
                self.waiting.remove(waiter)
            raise

    def release(self, exclusive: bool, end: float) -> None:
        """Give the lock back; ``end`` is the virtual time the hold was due to end."""
        if exclusive:
            self.writer = False
        else:
            self.readers -= 1
        self._last_release = end
        self._dispatch()

    def _dispatch(self) -> None:
        while self.waiting:
            writers = [w for w in self.waiting if w.exclusive]
            if writers:
                # Writer preference: no new reader while a writer waits.
                if not self._free_for(True):
                    return
                chosen = writers[0]
            else:
                if not self._free_for(False):
                    return
                chosen = self.waiting[self.rng.randrange(len(self.waiting))]
            self.waiting.remove(chosen)
            self._take(chosen.exclusive)
            chosen.future.set_result(max(chosen.arrival, self._last_release))


class CostModel(Protocol):
    async def locked(
        self, exclusive: bool, work: Callable[[], R], items: Callable[[R], int], route: str = ""
    ) -> R:
        """Run ``work`` under the controller lock (shared for reads, exclusive for writes);
        its cost is charged to ``route`` in the stats."""
        ...

    async def dbd(self, kind: str, route: str = "") -> None: ...
    async def auth_reject(self, route: str = "") -> None: ...


class NoCost:
    """``--cost-model none``: answer at once (functional tests)."""

    async def locked(
        self, exclusive: bool, work: Callable[[], R], items: Callable[[R], int], route: str = ""
    ) -> R:
        return work()

    async def dbd(self, kind: str, route: str = "") -> None:
        return None

    async def auth_reject(self, route: str = "") -> None:
        return None


class RealisticCost:
    """``--cost-model realistic``: see the module docstring."""

    def __init__(self, params: CostParams, stats: Stats, seed: int) -> None:
        self.p = params
        self.stats = stats
        self.rng = random.Random(seed ^ 0x5EED)
        self.lock = ControllerLock(params.read_parallelism, self.rng)
        self._render: asyncio.Semaphore | None = None
        self._dbd: asyncio.Semaphore | None = None

    def _jitter(self) -> float:
        s = self.p.jitter_sigma
        return math.exp(self.rng.gauss(-s * s / 2, s)) if s > 0 else 1.0

    def _contention(self) -> float:
        return 1.0 + self.p.contention * min(len(self.lock.waiting), 8) / 8

    async def locked(
        self, exclusive: bool, work: Callable[[], R], items: Callable[[R], int], route: str = ""
    ) -> R:
        """Queue for the lock, take the snapshot or apply the write, hold, release.

        The work runs when the lock is granted, as in slurmctld, so a read
        admitted after a write always sees it.
        """
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        start = await self.lock.acquire(exclusive)
        n = 0
        service = 0.0
        try:
            result = work()
            n = items(result)
            base = self.p.write_base if exclusive else self.p.read_base
            service = (base + self.p.ctld_per_item * n) * self._jitter() * self._contention()
            delay = start + service - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            self.lock.release(exclusive, start + service)
        self.stats.charge(route, max(0.0, start - arrival), service)
        render = self.p.render_per_item * n
        if render >= 0.0005:
            if self._render is None:
                self._render = asyncio.Semaphore(max(1, self.p.render_threads))
            async with self._render:
                await asyncio.sleep(render * self._jitter())
        return result

    async def dbd(self, kind: str, route: str = "") -> None:
        if self._dbd is None:
            self._dbd = asyncio.Semaphore(max(1, self.p.dbd_parallelism))
        low, high = DBD_COST.get(kind, DBD_COST["default"])
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        async with self._dbd:
            started = loop.time()
            service = self.rng.uniform(low, high) * self.p.dbd_scale
            await asyncio.sleep(service)
        self.stats.charge(route, started - arrival, service)

    async def auth_reject(self, route: str = "") -> None:
        # slurmctld takes the request, checks the token and refuses: a read's
        # cost plus the rejection path (about 12 ms in all on 22.05).
        await self.locked(False, lambda: 0, lambda _: 0, route)
        await asyncio.sleep(self.p.auth_reject_delay * self._jitter())


def make_cost(name: str, params: CostParams, stats: Stats, seed: int) -> CostModel:
    if name == "none":
        return NoCost()
    return RealisticCost(params, stats, seed)
