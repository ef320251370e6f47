"""ASGI app factories for ``forward_bench.py --target-app``: the proxy with and
without its hardening middlewares, so a measurement separates the proxy core
(routing, headers, upstream transport, body relay) from the layers around it.

    --target-app 'core=benchmarks.proxy_apps:core'
    --target-app 'full=benchmarks.proxy_apps:full'
    --target-app 'miss=benchmarks.proxy_apps:cached_miss'   # a cacheable GET that misses

Each factory takes the upstream URL, as ``forward_bench`` passes it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cacheproxy import settings as settings_mod
from cacheproxy.core.rules import RuleSet
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.http.respond import ASGIApp

MISS_RULES = """
# Every GET under /slurm/{v}/bench/ is cached for a microsecond: each request
# that does not join a running fetch is a miss that is fetched and stored.
[[rule]]
name = "bench"
methods = ["GET"]
path = "/slurm/{v}/bench/{size}"
ttl = 0.000001
tags = ["bench"]
"""


def _app(upstream: str, rules: RuleSet | None = None) -> CacheProxyApp:
    s = settings_mod.load(cli={"upstream": upstream}, env={})
    return CacheProxyApp(s, rules=rules)


def core(upstream: str) -> ASGIApp:
    """The proxy without hardening middlewares (default rules)."""
    return _app(upstream)


def full(upstream: str) -> ASGIApp:
    """The proxy inside RequestContext and AuthGuard, as ``serve`` runs it
    (minus uvicorn's protocol limits)."""
    from cacheproxy.http import hardening

    return hardening.wrap(_app(upstream))


def cached_miss(upstream: str) -> ASGIApp:
    """The proxy core with a rule that caches the bench path almost not at all."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(MISS_RULES)
    try:
        return _app(upstream, RuleSet.from_file(f.name))
    finally:
        Path(f.name).unlink()
