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
from typing import TYPE_CHECKING, Any

from cacheproxy import introspect
from cacheproxy.upstream.base import UpstreamError, UpstreamRequest

if TYPE_CHECKING:
    from cacheproxy.http.app import CacheProxyApp

PING_TARGET = "/slurm/v0.0.38/ping"
"""Answered by every slurmrestd (a 404 from versions without v0.0.38 still
proves it alive); without credentials it is refused before slurmctld is asked."""
GATEWAY_FAILURES = frozenset({502, 503, 504})
"""Answers that mean something between us and slurmrestd found it down."""
_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    upstream: str
    """``ok (HTTP 401)`` or why not."""
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


class Readiness:
    """Checks upstream and store at most once per ``interval`` seconds."""

    def __init__(
        self,
        root: CacheProxyApp,
        *,
        interval: float = 1.0,
        timeout: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
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
        proxy = self._root.proxy
        now = self.monotonic()
        if proxy is None:
            return Verdict(False, "not started", "not started", False, now)
        upstream_ok, upstream = await self._upstream(proxy)
        store_ok, store = await self._store(proxy.store)
        return Verdict(upstream_ok, upstream, store, store_ok, self.monotonic())

    async def _upstream(self, proxy: Any) -> tuple[bool, str]:
        transport = introspect.innermost(proxy.transport)
        request = UpstreamRequest(
            method="GET",
            target=PING_TARGET,
            headers=[
                (b"host", proxy.config.upstream_host),
                (b"user-agent", b"cacheproxy-readiness"),
            ],
            retry_on_stale_connection=True,
        )
        try:
            async with asyncio.timeout(self.timeout):
                resp = await transport.send(request)
                try:
                    seen = 0
                    async for chunk in resp.aiter_body():  # drain: keep the connection
                        seen += len(chunk)
                        if seen > _MAX_BODY:
                            break
                finally:
                    await resp.aclose()
        except TimeoutError:
            return False, f"timed out after {self.timeout:g} s"
        except UpstreamError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a transport bug must read as "not ready", not a 500
            return False, f"{type(exc).__name__}: {exc}"
        status = int(resp.status)
        if status in GATEWAY_FAILURES:
            return False, f"HTTP {status} from a gateway"
        return True, f"ok (HTTP {status})"

    async def _store(self, store: object) -> tuple[bool, str]:
        shared = introspect.shared_tier(store)
        ping = getattr(shared, "ping", None)
        if shared is None or ping is None:
            return True, "local"
        try:
            async with asyncio.timeout(self.timeout):
                ok = bool(await ping())
        except TimeoutError:
            return False, f"timed out after {self.timeout:g} s"
        except Exception as exc:  # a ping must answer, not raise; treat as down
            return False, f"{type(exc).__name__}: {exc}"
        return (True, "ok") if ok else (False, "no answer to PING")
