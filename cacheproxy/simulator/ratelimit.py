"""slurmctld's RPC rate limiting (``SlurmctldParameters=rl_enable``, 23.02 on), as
slurmrestd's clients see it.

slurmctld keeps a token bucket per user (``rl_bucket_size``, default 30;
``rl_refill_rate`` tokens per ``rl_refill_period`` second, default 2 per 1 s);
an RPC from a user whose bucket is empty is answered
``SLURMCTLD_COMMUNICATIONS_BACKOFF``. root and SlurmUser are exempt. The
Slurm library inside slurmrestd (``slurm_send_recv_controller_msg()``) does
not return that answer: it sleeps and sends the RPC again, without bound,
1 s before every retry in 23.02 and *n* s before the *n*-th from 23.11 on. So
a limited user gets a slow 200, never an error, and a client that polls
faster than the refill rate only waits longer. (The 502 "Rate limit
exceeded" mapping of later releases is reachable only by errors that bypass
that retry; docs/COMPATIBILITY.md.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cacheproxy.simulator.releases import Release

#: Users slurmctld never limits (``validate_slurm_user()``: uid 0 or SlurmUser).
EXEMPT = frozenset({"root", "slurm"})
#: The first release with ``rl_enable``.
SINCE = (23, 2, 0)


@dataclass
class RateLimiter:
    bucket_size: int = 30
    refill_rate: float = 2.0  # tokens per second
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: RPCs answered BACKOFF (each one a retry by slurmrestd's library).
    backoffs: int = 0
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, user: str) -> bool:
        """Take a token from ``user``'s bucket; False: slurmctld says back off."""
        now = self.clock()
        tokens, then = self._buckets.get(user, (float(self.bucket_size), now))
        tokens = min(float(self.bucket_size), tokens + (now - then) * self.refill_rate)
        if tokens >= 1.0:
            self._buckets[user] = (tokens - 1.0, now)
            return True
        self._buckets[user] = (tokens, now)
        return False

    async def admit(self, user: str, release: Release) -> int:
        """Wait as slurmrestd's library does until slurmctld takes the RPC; the retries."""
        if user in EXEMPT or release.number < SINCE:
            return 0
        retries = 0
        while not self.take(user):
            self.backoffs += 1
            retries += 1
            delay = retries if release.rate_limit_retry_sleep_grows else 1
            await self.sleep(delay)
        return retries
