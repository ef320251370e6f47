"""The proxy's own endpoints, under ``/_cacheproxy/`` (a prefix slurmrestd
never uses).  A small FastAPI app: these are not hot paths.

==============================  =============================================
``GET /_cacheproxy/``           status page (HTML; reads ``stats``)
``GET /_cacheproxy/health``     liveness: the process serves requests
``GET /_cacheproxy/ready``      readiness: upstream answers (store reported)
``GET /_cacheproxy/stats``      counters as JSON (public; tags folded)
``GET /_cacheproxy/metrics``    Prometheus exposition
``/_cacheproxy/admin/...``      purge and detailed stats (``admin_token``)
==============================  =============================================

Handlers are ``async def`` on purpose: they then run on the event loop, the
only thread that touches the counters, so a scrape never reads a dict while
the hot path changes it.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from cacheproxy import __version__
from cacheproxy.ops.admin import admin_router
from cacheproxy.ops.describe import redact_url, tiers
from cacheproxy.ops.metrics import Exporter
from cacheproxy.ops.paths import OWN_PREFIX
from cacheproxy.ops.readiness import Readiness
from cacheproxy.ops.report import Report

_PAGE_HEADERS = {
    # Inline script and style only; it may fetch from this origin, nothing else.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def status_page() -> str:
    """The status page, shipped inside the package (``cacheproxy/ops/static``)."""
    return resources.files("cacheproxy.ops").joinpath("static/status.html").read_text("utf-8")


def public_stats(report: Report) -> dict[str, Any]:
    """The JSON of ``/_cacheproxy/stats`` (and what the status page shows)."""
    snap: dict[str, Any] = report.stats.snapshot()
    snap["about"] = about(report)
    if report.started:
        store = report.store_state()
        for name in ("entries", "bytes", "evictions"):  # top-level, as before
            if name in store:
                snap[name] = int(store[name])
        snap["store"] = store
        snap["transport"] = report.transport_state()
        snap["upstream_fetches_in_flight"] = report.fetches_in_flight()
        snap["scopes"] = report.scopes()
    return snap


def about(report: Report) -> dict[str, Any]:
    """Which proxy this is: version, upstream, tiers, the cache's bound and
    this worker (with ``--workers N`` each answer comes from one of them)."""
    settings = report.settings_summary()
    return {
        "version": __version__,
        "upstream": redact_url(str(settings.get("upstream", ""))),
        "tiers": tiers(str(settings.get("redis_url", "")), bool(settings.get("local_tier"))),
        "max_bytes": settings.get("max_bytes"),
        "max_entry_bytes": settings.get("max_entry_bytes"),
        "worker": os.getpid(),
        "workers": settings.get("workers"),
    }


def own_endpoints(report: Report) -> FastAPI:
    """The own endpoints' app; its ``state`` holds the readiness check and
    the metrics exporter (the lifespan starts and stops the latter)."""
    app = FastAPI(
        title="cacheproxy",
        openapi_url=f"{OWN_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    readiness = Readiness(report)
    exporter = Exporter(report)
    app.state.readiness = readiness
    app.state.exporter = exporter

    @app.get(f"{OWN_PREFIX}/health")
    async def health() -> dict[str, str]:
        """Liveness: the process serves requests (no upstream or store call)."""
        return {"status": "ok"}

    @app.get(f"{OWN_PREFIX}/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 when slurmrestd answers, else 503; the shared
        store's state is in the body (without it the replica passes through)."""
        verdict = await readiness.check()
        return JSONResponse(verdict.to_json(), status_code=200 if verdict.ready else 503)

    @app.get(f"{OWN_PREFIX}/stats")
    async def stats() -> JSONResponse:
        """Counters since start (JSON)."""
        return JSONResponse(public_stats(report), headers={"Cache-Control": "no-store"})

    @app.get(f"{OWN_PREFIX}/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text format (OpenMetrics if the scraper asks for it)."""
        body, content_type = exporter.render(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    @app.get(OWN_PREFIX, include_in_schema=False)
    async def status_redirect() -> RedirectResponse:
        # The page fetches "stats" relative to itself: it must end in "/".
        return RedirectResponse(f"{OWN_PREFIX}/", status_code=308)

    @app.get(f"{OWN_PREFIX}/", include_in_schema=False)
    async def status() -> HTMLResponse:
        """The status page: hit ratio, upstream load saved, per-route table."""
        return HTMLResponse(status_page(), headers=_PAGE_HEADERS)

    app.include_router(admin_router(report, OWN_PREFIX, readiness))
    return app


async def start_background(own: FastAPI) -> None:
    """Start the own endpoints' background work: with several workers, each
    writes its metrics for the others' scrapes (see :mod:`cacheproxy.ops.metrics`)."""
    exporter: Exporter = own.state.exporter
    await exporter.start()


async def stop_background(own: FastAPI) -> None:
    exporter: Exporter = own.state.exporter
    await exporter.stop()
