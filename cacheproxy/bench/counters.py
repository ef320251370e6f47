"""Where upstream request counts come from, and which source was used.

In order of preference:

* ``simulator``: the simulator's own count (``GET /_sim/stats``), exact for
  every target; zeroed with ``POST /_sim/reset`` before each run.
* ``proxy``: the proxy's count of requests it sent upstream
  (``/_cacheproxy/stats``), exact for the proxy target only.
* ``diag``: slurmctld's RPC counters from ``GET /slurm/{v}/diag``
  (``rpcs_by_message_type``, the bench's own REQUEST_STATS_INFO left out);
  these count controller RPCs, not REST requests, and see every other
  client of the cluster too.
* ``client``: a direct run sends every request upstream, so the client's
  own count is the upstream count.

Each counter reports totals since its ``start()``.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from cacheproxy.bench.httpclient import HttpClient
from cacheproxy.bench.identities import Credential

SIM_STATS = "/_sim/stats"
SIM_RESET = "/_sim/reset"
PROXY_STATS = "/_cacheproxy/stats"


def _loads(body: bytes | None) -> dict[str, Any] | None:
    if body is None:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class Counter(Protocol):
    source: str

    async def start(self) -> None: ...

    async def total(self) -> int | None: ...

    async def details(self) -> dict[str, Any]: ...


class SimulatorCounter:
    """``/_sim/stats`` of the simulator, zeroed at start."""

    source = "simulator"

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self._base = 0
        self._base_routes: dict[str, int] = {}
        self._base_busy = 0.0
        self._base_lock = 0.0
        self._base_busy_routes: dict[str, float] = {}
        self._base_lock_routes: dict[str, float] = {}

    async def _stats(self) -> dict[str, Any] | None:
        return _loads(await self.http.get_json_bytes(SIM_STATS))

    async def start(self) -> None:
        await self.http.post_empty(SIM_RESET)
        stats = await self._stats() or {}
        # Whatever reset did, count from here.
        self._base = int(stats.get("total", 0))
        self._base_routes = dict(stats.get("by_route", {}))
        self._base_busy = float(stats.get("busy_seconds", 0.0))
        self._base_lock = float(stats.get("lock_wait_seconds", 0.0))
        self._base_busy_routes = dict(stats.get("busy_by_route", {}))
        self._base_lock_routes = dict(stats.get("lock_wait_by_route", {}))

    async def total(self) -> int | None:
        stats = await self._stats()
        if stats is None:
            return None
        return int(stats.get("total", 0)) - self._base

    async def details(self) -> dict[str, Any]:
        stats = await self._stats() or {}
        routes = {
            k: int(v) - int(self._base_routes.get(k, 0))
            for k, v in dict(stats.get("by_route", {})).items()
        }

        def seconds(key: str, base: dict[str, float]) -> dict[str, float]:
            now = dict(stats.get(key, {}))
            return {k: round(float(v) - float(base.get(k, 0.0)), 3) for k, v in sorted(now.items())}

        return {
            "by_route": {k: v for k, v in sorted(routes.items()) if v},
            "busy_by_route": seconds("busy_by_route", self._base_busy_routes),
            "lock_wait_by_route": seconds("lock_wait_by_route", self._base_lock_routes),
            "busy_seconds": round(float(stats.get("busy_seconds", 0.0)) - self._base_busy, 3),
            "lock_wait_seconds": round(
                float(stats.get("lock_wait_seconds", 0.0)) - self._base_lock, 3
            ),
        }


class ProxyCounter:
    """The proxy's own upstream count (``/_cacheproxy/stats``), as deltas."""

    source = "proxy"

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self._base: dict[str, Any] = {}

    async def _stats(self) -> dict[str, Any] | None:
        return _loads(await self.http.get_json_bytes(PROXY_STATS))

    async def start(self) -> None:
        self._base = await self._stats() or {}

    async def total(self) -> int | None:
        stats = await self._stats()
        if stats is None:
            return None
        return int(stats.get("upstream_requests", 0)) - int(self._base.get("upstream_requests", 0))

    async def details(self) -> dict[str, Any]:
        stats = await self._stats() or {}

        def delta(name: str) -> int:
            return int(stats.get(name, 0)) - int(self._base.get(name, 0))

        base_routes = dict(self._base.get("upstream_by_route", {}))
        routes = {
            k: int(v) - int(base_routes.get(k, 0))
            for k, v in dict(stats.get("upstream_by_route", {})).items()
        }
        return {
            "upstream_requests": delta("upstream_requests"),
            "coalesced": delta("coalesced"),
            "upstream_errors": delta("upstream_errors"),
            "upstream_by_rule": {k: v for k, v in sorted(routes.items()) if v},
        }

    async def coalesced(self) -> int | None:
        stats = await self._stats()
        if stats is None:
            return None
        return int(stats.get("coalesced", 0)) - int(self._base.get("coalesced", 0))


def rpc_total(diag: dict[str, Any]) -> int | None:
    """Sum of slurmctld RPCs by message type, the bench's own /diag calls left out."""
    stats = diag.get("statistics")
    if not isinstance(stats, dict):
        return None
    rpcs = stats.get("rpcs_by_message_type")
    if not isinstance(rpcs, list):
        return None
    total = 0
    for item in rpcs:
        if not isinstance(item, dict) or item.get("message_type") == "REQUEST_STATS_INFO":
            continue
        count = item.get("count")
        if isinstance(count, dict):
            count = count.get("number")
        if isinstance(count, int):
            total += count
    return total


class DiagCounter:
    """slurmctld RPC counters from ``/slurm/{v}/diag`` (a real upstream)."""

    source = "diag"

    def __init__(self, http: HttpClient, cred: Credential, version: str) -> None:
        self.http = http
        self.cred = cred
        self.path = f"/slurm/{version}/diag"
        self._base: int | None = None

    async def _read(self) -> int | None:
        resp = await self.http.request("GET", self.path, self.cred.headers())
        if resp.status != 200:
            return None
        data = _loads(resp.body)
        return rpc_total(data) if data is not None else None

    async def start(self) -> None:
        self._base = await self._read()

    async def total(self) -> int | None:
        now = await self._read()
        if now is None or self._base is None:
            return None
        return now - self._base

    async def details(self) -> dict[str, Any]:
        return {"note": "slurmctld RPCs (not REST requests), all clients of the cluster"}

    async def available(self) -> bool:
        return await self._read() is not None


class ClientCounter:
    """A direct run's upstream count is its own request count."""

    source = "client"

    def __init__(self) -> None:
        self.count = 0

    async def start(self) -> None:
        self.count = 0

    async def total(self) -> int | None:
        return None  # filled in from the samples after the run

    async def details(self) -> dict[str, Any]:
        return {}
