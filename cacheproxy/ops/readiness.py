"""Readiness: can this replica do its job right now?

Ready means slurmrestd answers (any HTTP answer proves it alive: a ping
without credentials gets 401 from a real slurmrestd, and answering that costs
slurmctld nothing).  The shared tier (Redis) is reported, never required: a
replica whose Redis is down still answers every request, straight from
slurmrestd (pass-through; see docs/redis-tier.md), so taking it out of the
balancer would only move its clients to replicas in the same state, or drop
them when every replica shares that Redis.  A load balancer asks often, so the
verdict is cached for ``interval`` seconds and concurrent probes share one
check: readiness never becomes upstream load.

Liveness (``/_cacheproxy/health``) stays separate and cheap: a replica whose
upstream is down is not ready, but restarting it would not help.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from cacheproxy.ops.report import Report

GATEWAY_FAILURES = frozenset({502, 503, 504})
"""Answers that mean something between us and slurmrestd found it down."""


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    upstream: str
    """``ok: reachable (HTTP 401 ...)`` or why not."""
    store: str
    """``ok``, ``local`` (no shared tier) or why it does not answer."""
    store_ok: bool
    """The shared tier answers (or there is none): the cache is in use;
    otherwise requests pass through to slurmrestd."""
    checked_at: float
    """Monotonic seconds of the check (for caching)."""

    def to_json(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "not ready",
            "upstream": self.upstream,
            "store": self.store,
            "cache": "on" if self.store_ok else "pass-through",
        }


def probe_meaning(status: int) -> str:
    """What the anonymous probe's answer says, in words: a real slurmrestd
    answers it 401 (it wants a credential), which reads like an error but
    proves it up."""
    if status == 401:
        return "ok: reachable (HTTP 401 to the anonymous probe is expected)"
    return f"ok: reachable (HTTP {status} to the anonymous probe)"


class Readiness:
    """Checks upstream and store at most once per ``interval`` seconds."""

    def __init__(
        self,
        report: Report,
        *,
        interval: float = 1.0,
        timeout: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report
        self.interval = interval
        self.timeout = timeout
        self.monotonic = monotonic
        self.last: Verdict | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> Verdict:
        """The cached verdict if recent enough, else a fresh one."""
        if self._fresh(self.last):
            assert self.last is not None
            return self.last
        async with self._lock:  # one check for every probe that arrives meanwhile
            if self._fresh(self.last):
                assert self.last is not None
                return self.last
            self.last = await self._check()
            return self.last

    def _fresh(self, verdict: Verdict | None) -> bool:
        return verdict is not None and self.monotonic() - verdict.checked_at < self.interval

    async def _check(self) -> Verdict:
        now = self.monotonic()
        if not self._report.started:
            return Verdict(False, "not started", "not started", False, now)
        upstream_ok, upstream = await self._upstream()
        store_ok, store = await self._store()
        self._report.stats.ready = int(upstream_ok)  # for the metrics and alerts
        return Verdict(upstream_ok, upstream, store, store_ok, self.monotonic())

    async def _upstream(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._report.probe_upstream()
        except TimeoutError:
            return False, f"timed out after {self.timeout:g} s"
        except Exception as exc:  # a transport fault (or bug) reads as "not ready", not a 500
            return False, f"{type(exc).__name__}: {exc}"
        if status in GATEWAY_FAILURES:
            return False, f"HTTP {status} from a gateway"
        return True, probe_meaning(status)

    async def _store(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.timeout):
                ok = await self._report.probe_store()
        except TimeoutError:
            return False, f"timed out after {self.timeout:g} s"
        except Exception as exc:  # a ping must answer, not raise; treat as down
            return False, f"{type(exc).__name__}: {exc}"
        if ok is None:
            return True, "local"
        return (True, "ok") if ok else (False, "no answer to PING")
