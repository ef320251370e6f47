"""The proxy's own endpoints, under ``/_cacheproxy/`` (a prefix slurmrestd
never uses): health, stats.  A small FastAPI app: these are not hot paths."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from cacheproxy.store.memory import MemoryStore

if TYPE_CHECKING:
    from cacheproxy.app import CacheProxyApp

OWN_PREFIX = "/_cacheproxy"


def own_endpoints(root: CacheProxyApp) -> FastAPI:
    app = FastAPI(
        title="cacheproxy",
        openapi_url=f"{OWN_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.get(f"{OWN_PREFIX}/health")
    async def health() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    @app.get(f"{OWN_PREFIX}/stats")
    async def stats() -> JSONResponse:
        """Counters since start (JSON)."""
        snap: dict[str, Any] = root.stats.snapshot()
        store = root.proxy.store if root.proxy else None
        if isinstance(store, MemoryStore):
            snap["entries"] = len(store)
            snap["bytes"] = store.currsize
            snap["evictions"] = store.evictions
        return JSONResponse(snap)

    return app
