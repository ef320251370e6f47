"""The hardened proxy on a real socket: uvicorn with the CLI's options
(limits, TLS, the httptools subclass) around ``hardening.wrap(app)``, the real
upstream transport behind it, all in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from cacheproxy import hardening, httplimits
from cacheproxy.app import CacheProxyApp
from cacheproxy.rules import RuleSet
from cacheproxy.settings import Settings


@asynccontextmanager
async def serve(app: Any, *, lifespan: str = "on", **options: Any) -> AsyncIterator[int]:
    """Run ``app`` under uvicorn on 127.0.0.1:<free port>; yields the port."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="none",
        lifespan=lifespan,
        log_level="warning",
        server_header=False,
        date_header=False,
        **{"http": "httptools", "access_log": False, **options},
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@dataclass
class Proxy:
    """A running hardened proxy."""

    app: CacheProxyApp
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@asynccontextmanager
async def hardened_proxy(
    settings: Settings, *, rules: RuleSet | None = None, **overrides: Any
) -> AsyncIterator[Proxy]:
    """``cacheproxy serve`` in-process: the same wrapping and uvicorn options."""
    app = CacheProxyApp(settings, rules=rules)
    options = hardening.uvicorn_options(settings)
    options.update(overrides)
    try:
        async with serve(hardening.wrap(app), **options) as port:
            yield Proxy(app, port, "https" if settings.tls_cert else "http")
    finally:
        httplimits.configure()  # back to the defaults for the next test
