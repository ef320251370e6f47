"""Read-only looks at the store, the transport and the coalescer, for the
JSON stats and the Prometheus collector.

Stores and transports are reached through their protocols, which say nothing
about sizes or queues; these helpers know the concrete classes (and stay
silent about ones they do not know), so the hot-path classes need no
reporting interface of their own.
"""

from __future__ import annotations

from typing import Any

from cacheproxy.store.memory import MemoryStore


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


def store_info(store: object) -> dict[str, float]:
    """Sizes and counters of ``store`` that are cheap to read."""
    out: dict[str, float] = {}
    local = local_store(store)
    if local is not None:
        out["entries"] = len(local)
        out["bytes"] = local.currsize
        out["max_bytes"] = local.max_bytes
        out["evictions"] = local.evictions
    for name in ("local_hits", "local_stale", "outage_hits"):
        value = getattr(store, name, None)
        if isinstance(value, int):
            out[name] = value
    shared = shared_tier(store)
    circuit = getattr(shared, "circuit", None)
    if circuit is not None:
        out["shared_circuit_open"] = 1 if getattr(circuit, "is_open", False) else 0
        out["shared_faults"] = int(getattr(circuit, "faults", 0))
    return out


def protection(transport: object) -> Any | None:
    """The transport's concurrency limiter/breaker wrapper, if it has one."""
    seen = 0
    while transport is not None and seen < 8:
        if hasattr(transport, "limiter") and hasattr(transport, "breaker"):
            return transport
        transport = getattr(transport, "inner", None)
        seen += 1
    return None


def innermost(transport: Any) -> Any:
    """The transport under any protection wrapper (readiness pings the
    upstream itself, not the proxy's own queue)."""
    seen = 0
    while hasattr(transport, "inner") and seen < 8:
        transport = transport.inner
        seen += 1
    return transport


def transport_info(transport: object) -> dict[str, float]:
    """Requests in flight and queued to slurmrestd, and the breaker's state."""
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
