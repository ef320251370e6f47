"""The ASGI application: the proxied path plus the proxy's own endpoints.

Requests under ``/_cacheproxy/`` (a prefix slurmrestd never uses) go to a
small FastAPI app; everything else goes straight to the raw-ASGI
:class:`~cacheproxy.http.proxy.Proxy`, without a framework in the way.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cacheproxy.core.identity import IdentityResolver
from cacheproxy.core.rules import RuleSet
from cacheproxy.http.jwtcheck import token_verifier
from cacheproxy.http.pipeline import Answer, Continue, Exchange, Outcome, Pipeline
from cacheproxy.http.proxy import Proxy, ProxyConfig
from cacheproxy.http.respond import Receive, Scope, Send
from cacheproxy.http.sitescope import SiteScopes
from cacheproxy.ops.adapter import AppReport
from cacheproxy.ops.endpoints import own_endpoints, start_background, stop_background
from cacheproxy.ops.paths import OWN_PREFIX
from cacheproxy.settings import Settings
from cacheproxy.stats import Stats
from cacheproxy.store.base import Store
from cacheproxy.store.memory import MemoryStore
from cacheproxy.upstream.base import Transport

log = logging.getLogger("cacheproxy")

SETTINGS_ENV = "CACHEPROXY__SETTINGS_JSON"
"""How ``--workers N`` hands the parent's settings to each worker process."""


def hmac_key_for(s: Settings) -> bytes:
    """The key credentials are hashed with.

    Replicas sharing Redis must agree on it, or an acceptance recorded by one
    is unknown to the others; without a configured key they derive one from
    the Redis URL and prefix (documented: set ``hmac_key`` in production).
    """
    if s.hmac_key:
        return s.hmac_key.encode()
    if s.redis_url:
        return hashlib.sha256(
            b"cacheproxy-hmac\0" + (s.redis_url + s.redis_prefix).encode()
        ).digest()
    return secrets.token_bytes(32)


def upstream_host(url: str) -> bytes:
    if url.startswith("unix:"):
        return b"localhost"
    return (urlsplit(url).netloc or "localhost").encode()


def build_store(s: Settings) -> tuple[Store, bool]:
    """The configured store, and whether it is shared between processes."""
    local = MemoryStore(max_bytes=s.max_bytes)
    if not s.redis_url:
        return local, False
    from cacheproxy.store.redis import RedisStore

    shared = RedisStore(
        s.redis_url,
        prefix=s.redis_prefix,
        timeout=s.redis_timeout,
        max_entry_bytes=s.max_entry_bytes,
    )
    if s.local_tier:
        from cacheproxy.store.tiered import TieredStore

        return TieredStore(local=local, shared=shared), True
    return shared, True


def build_transport(s: Settings, stats: Stats | None = None) -> Transport:
    """The upstream transport, behind the concurrency limit and circuit
    breaker of :mod:`cacheproxy.upstream.protect`."""
    from cacheproxy.upstream import create_transport
    from cacheproxy.upstream.protect import from_settings

    transport: Transport = create_transport(
        s.upstream,
        max_connections=s.upstream_connections,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        kind=s.upstream_client,
        ca_file=s.upstream_ca_file,
    )
    return from_settings(transport, s, stats)


class CacheProxyApp:
    """Dispatches between the proxy and its own endpoints; owns the lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        rules: RuleSet | None = None,
        transport: Transport | None = None,
        store: Store | None = None,
        shared_store: bool = False,
    ) -> None:
        self.settings = settings
        self.rules = rules or (
            RuleSet.from_file(settings.config) if settings.config else RuleSet.default()
        )
        self.stats = Stats()
        self._transport = transport
        self._store = store
        self._shared = shared_store
        self.proxy: Proxy | None = None
        self.on_startup: list[Callable[[], None]] = []
        """Called once the proxy is up (the serving process's SIGHUP handler)."""
        self.own = own_endpoints(AppReport(lambda: self.settings, self.stats, lambda: self.proxy))
        self._bare = Pipeline((), self, self.stats)

    async def startup(self) -> None:
        if self.proxy is not None:
            return
        s = self.settings
        if self._transport is None:
            # Large bodies: keep glibc from returning buffers to the kernel
            # after every request (measured: 460 -> 290 us per 200 KiB miss).
            from cacheproxy.upstream.malloc import tune_malloc

            tune_malloc()
        transport = self._transport or build_transport(s, self.stats)
        if self._store is not None:
            store, shared = self._store, self._shared
        else:
            store, shared = build_store(s)
        board = None
        if shared:
            from cacheproxy.store.demotions import board_for

            board = board_for(store)  # (the audit's demotions, read by every replica)

        self.proxy = Proxy(
            rules=self.rules,
            store=store,
            transport=transport,
            resolver=IdentityResolver(hmac_key_for(s)),
            config=ProxyConfig(
                upstream_host=upstream_host(s.upstream),
                auth_ttl=s.auth_ttl,
                max_entry_bytes=s.max_entry_bytes,
                max_body_bytes=s.max_body_bytes,
                max_url_bytes=s.max_url_bytes,
                audit_rate=s.shared_audit_rate,
                audit_window=s.shared_audit_window,
            ),
            stats=self.stats,
            shared_store=shared,
            scopes=SiteScopes(
                self.rules.rules, private_data=s.private_data, slurm_conf=s.slurm_conf
            ),
            verifier=token_verifier(s),
            demotions=board,
        )
        shared_part = getattr(store, "shared", store)
        check_server = getattr(shared_part, "check_server", None)
        if check_server is not None:
            await check_server()  # logs Redis settings that weaken the tier
        await start_background(self.own)
        if self._transport is None:
            # Serving for real (tests inject a transport): keep the garbage
            # collector's passes off the request path (measured: 30-90 us of
            # CPU per forwarded request, see cacheproxy/gctune.py).
            from cacheproxy.http.gctune import tune_gc

            tune_gc()
        for hook in self.on_startup:
            hook()

    async def shutdown(self) -> None:
        proxy, self.proxy = self.proxy, None
        if proxy is None:
            return
        await stop_background(self.own)
        await proxy.aclose()
        await proxy.transport.aclose()
        await proxy.store.aclose()

    def respond(self, ex: Exchange) -> Outcome:
        """The pipeline's handler: the own endpoints, or the proxied path."""
        scope = ex.scope
        if scope["path"].startswith(OWN_PREFIX):
            own = self.own
            return Continue(lambda receive, send: own(scope, receive, send))
        proxy = self.proxy
        if proxy is None:  # served without a lifespan (some test clients)
            return self._started(ex)
        return proxy.respond(ex)

    async def _started(self, ex: Exchange) -> Answer:
        await self.startup()
        assert self.proxy is not None
        answer = self.proxy.respond(ex)
        while not (type(answer) is tuple or isinstance(answer, Continue)):
            answer = await answer  # type: ignore[misc]
        return answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Served as ASGI without the hardening steps (tests, benchmarks): the
        same pipeline, with none of them."""
        if scope["type"] == "http":
            await self._bare(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("startup failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, **kw: Any) -> CacheProxyApp:
    return CacheProxyApp(settings, **kw)
