"""The app side's :class:`~cacheproxy.ops.report.Report`: the one place the
operations side's questions meet the concrete store, transport and coalescer.

Stores and transports are reached through their protocols, which say nothing
about sizes or queues; this adapter knows the concrete classes (and stays
silent about ones it does not know), so the hot-path classes need no
reporting methods of their own.  The proxy exists only between the
lifespan's startup and shutdown, hence a callable that returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any, Protocol

from cacheproxy.core.rules import ALL_TAG, Rule
from cacheproxy.ops.report import RuleSummary, StoreState, StoreUnavailable, TransportState
from cacheproxy.settings import Settings
from cacheproxy.stats import Stats
from cacheproxy.store.base import Store, StoreError
from cacheproxy.store.memory import MemoryStore
from cacheproxy.upstream.base import Transport, UpstreamRequest

PING_TARGET = "/slurm/v0.0.38/ping"
"""Answered by every slurmrestd (a 404 from versions without v0.0.38 still
proves it alive); without credentials it is refused before slurmctld is asked."""
_MAX_PING_BODY = 64 * 1024
_MAX_WRAPPERS = 8


class _Config(Protocol):
    @property
    def upstream_host(self) -> bytes: ...


class _Rules(Protocol):
    @property
    def rules(self) -> Sequence[Rule]: ...


class _Scopes(Protocol):
    def summary(self) -> dict[str, object]: ...

    def describe(self) -> list[dict[str, str]]: ...


class ProxyView(Protocol):
    """What the adapter reads of the running proxy."""

    @property
    def store(self) -> Store: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def coalescer(self) -> Sized: ...

    @property
    def config(self) -> _Config: ...

    @property
    def rules(self) -> _Rules: ...

    @property
    def scopes(self) -> _Scopes: ...

    def user_tag(self, name: str) -> str: ...


# -- looks at the concrete classes ---------------------------------------------------
def local_store(store: object) -> MemoryStore | None:
    """The in-process LRU: the store itself, or the local tier of a tiered one."""
    if isinstance(store, MemoryStore):
        return store
    local = getattr(store, "local", None)
    return local if isinstance(local, MemoryStore) else None


def shared_tier(store: object) -> object | None:
    """The shared (Redis) tier, whether used alone or behind a local tier."""
    if local_store(store) is store:
        return None
    shared = getattr(store, "shared", None)
    return shared if shared is not None else store


def store_state(store: object) -> StoreState:
    out: StoreState = {}
    local = local_store(store)
    if local is not None:
        out["entries"] = len(local)
        out["bytes"] = int(local.currsize)
        out["max_bytes"] = int(local.max_bytes)
        out["evictions"] = int(local.evictions)
    for name in ("local_hits", "local_stale", "outage_hits"):
        value = getattr(store, name, None)
        if isinstance(value, int):
            out[name] = value
    circuit = getattr(shared_tier(store), "circuit", None)
    if circuit is not None:
        out["shared_circuit_open"] = 1 if getattr(circuit, "is_open", False) else 0
        out["shared_faults"] = int(getattr(circuit, "faults", 0))
    return out


def protection(transport: object) -> Any | None:
    """The transport's concurrency limiter/breaker wrapper, if it has one."""
    for _ in range(_MAX_WRAPPERS):
        if transport is None:
            return None
        if hasattr(transport, "limiter") and hasattr(transport, "breaker"):
            return transport
        transport = getattr(transport, "inner", None)
    return None


def innermost(transport: Any) -> Any:
    """The transport under any protection wrapper (readiness pings the
    upstream itself, not the proxy's own queue)."""
    for _ in range(_MAX_WRAPPERS):
        if not hasattr(transport, "inner"):
            break
        transport = transport.inner
    return transport


def transport_state(transport: object) -> TransportState:
    guard = protection(transport)
    if guard is None:
        return {}
    return {
        "in_flight": int(guard.limiter.in_use),
        "queued": int(guard.limiter.queued),
        "max_in_flight": int(guard.limiter.limit),
        "circuit_open": 1 if guard.breaker.is_open else 0,
        "circuit_opened": int(guard.breaker.episodes),
    }


def summary(rule: Rule) -> RuleSummary:
    return RuleSummary(
        name=rule.name,
        path=rule.path,
        ttl=rule.ttl,
        cache=rule.cache,
        tags=tuple(t.text for t in rule.tags),
    )


# -- the Report ------------------------------------------------------------------------
class AppReport:
    """:class:`~cacheproxy.ops.report.Report` over one app's objects."""

    all_tag = ALL_TAG

    def __init__(
        self,
        settings: Callable[[], Settings],
        stats: Stats,
        proxy: Callable[[], ProxyView | None],
    ) -> None:
        self._settings = settings
        """The settings now (a reload replaces the live ones)."""
        self._stats = stats
        self._proxy = proxy

    @property
    def stats(self) -> Stats:
        return self._stats

    @property
    def started(self) -> bool:
        return self._proxy() is not None

    @property
    def admin_token(self) -> str:
        return self._settings().admin_token

    def settings_summary(self) -> Mapping[str, object]:
        return self._settings().public()

    def store_state(self) -> StoreState:
        proxy = self._proxy()
        return store_state(proxy.store) if proxy is not None else {}

    def transport_state(self) -> TransportState:
        proxy = self._proxy()
        return transport_state(proxy.transport) if proxy is not None else {}

    def fetches_in_flight(self) -> int:
        proxy = self._proxy()
        return len(proxy.coalescer) if proxy is not None else 0

    def rules(self) -> Sequence[RuleSummary]:
        proxy = self._proxy()
        return [summary(r) for r in proxy.rules.rules] if proxy is not None else []

    def scopes(self) -> Mapping[str, object]:
        proxy = self._proxy()
        if proxy is None:
            return {}
        return {**proxy.scopes.summary(), "routes": proxy.scopes.describe()}

    @property
    def shared_store(self) -> bool:
        proxy = self._proxy()
        return proxy is not None and shared_tier(proxy.store) is not None

    @property
    def user_purge(self) -> bool:
        return self.started

    def user_tag(self, user: str) -> str | None:
        proxy = self._proxy()
        return proxy.user_tag(user) if proxy is not None else None

    async def purge(self, tags: Sequence[str]) -> None:
        proxy = self._proxy()
        if proxy is None:
            raise StoreUnavailable("proxy not started")
        try:
            await proxy.store.bump(tags)
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from None
        self._stats.invalidated(tags, source="admin")

    async def probe_upstream(self) -> int:
        proxy = self._proxy()
        if proxy is None:
            raise RuntimeError("not started")
        request = UpstreamRequest(
            method="GET",
            target=PING_TARGET,
            headers=[
                (b"host", proxy.config.upstream_host),
                (b"user-agent", b"cacheproxy-readiness"),
            ],
            retry_on_stale_connection=True,
        )
        resp = await innermost(proxy.transport).send(request)
        try:
            seen = 0
            async for chunk in resp.aiter_body():  # drain: keep the connection
                seen += len(chunk)
                if seen > _MAX_PING_BODY:
                    break
        finally:
            await resp.aclose()
        return int(resp.status)

    async def probe_store(self) -> bool | None:
        proxy = self._proxy()
        if proxy is None:
            return None
        ping = getattr(shared_tier(proxy.store), "ping", None)
        if ping is None:
            return None
        return bool(await ping())
