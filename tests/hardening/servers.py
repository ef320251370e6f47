"""The hardened proxy on a real socket: uvicorn with the CLI's options
(limits, TLS, the server protocol) around ``hardening.wrap(app)``, the real
upstream transport behind it, all in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cacheproxy.core.rules import RuleSet
from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.core.servers import serve as core_serve


@asynccontextmanager
async def serve(app: Any, *, lifespan: str = "on", **options: Any) -> AsyncIterator[int]:
    """Run ``app`` under uvicorn on 127.0.0.1:<free port>; yields the port."""
    async with core_serve(app, lifespan=lifespan, **options) as url:
        yield int(url.rsplit(":", 1)[1])


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
    async with serve(hardening.wrap(app), **options) as port:
        yield Proxy(app, port, "https" if settings.tls_cert else "http")
