"""Wiring: the request pipeline's steps around :class:`~cacheproxy.http.app.CacheProxyApp`,
and the server's options.

From the socket inwards::

    server.HttpServer          URL/head size (414/431), head timeout (408),
                               trusted X-Forwarded-For; runs the pipeline,
                               writes whole answers itself
    uvicorn limit_concurrency  open connections/requests (503, written by the protocol)
    Pipeline                   safety net (503 in slurmrestd's shape)
      AccessLog (optional)     JSON access log, one line per request
      RequestContext           X-Request-ID
      AuthGuard                429 after repeated auth failures; per-user rate
      JwtCheck (optional)      401 for forged/expired tokens, locally
      RequireToken (unix: only) 401 for requests without a token (localauth.py)
      CacheProxyApp            own endpoints, or the proxy
        ProtectedTransport     upstream concurrency, queue, circuit breaker

Add a middleware-like step: a :class:`~cacheproxy.http.pipeline.BaseStep`
subclass in its own module here, placed in :func:`wrap`.  The steps are
separate from the proxy, so tests of the core run without them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from cacheproxy.core.rules import RuleError, RuleSet
from cacheproxy.http import server, tls
from cacheproxy.http.accesslog import AccessLog, RequestContext
from cacheproxy.http.app import SETTINGS_ENV, CacheProxyApp
from cacheproxy.http.guard import AuthGuard, IsAccepted
from cacheproxy.http.jwtcheck import JwtCheck, token_verifier
from cacheproxy.http.localauth import RequireToken, refuses_uncredentialed
from cacheproxy.http.pipeline import Pipeline, Step
from cacheproxy.lifecycle import Loaded, Reloader, Source, load
from cacheproxy.ops import logfmt
from cacheproxy.settings import Settings, SettingsError, trusted_proxies
from cacheproxy.upstream.base import Headers

STARTUP_FAILURE = 3
"""A worker's exit status when it cannot start (uvicorn's own value for a
failed startup: its supervisor then keeps the running workers)."""


def acceptance_check(app: CacheProxyApp) -> IsAccepted:
    """Did slurmrestd accept this request's exact credential recently?"""

    async def accepted(headers: Headers) -> bool:
        proxy = app.proxy
        if proxy is None:
            return False
        return await proxy.credentials.accepted(proxy.resolver.resolve(headers))

    return accepted


def wrap(app: CacheProxyApp) -> Pipeline:
    """The hardened application: the pipeline of steps, ``app`` its handler."""
    s = app.settings
    steps: list[Step] = [AccessLog(app.stats, s.access_log), RequestContext()]
    verifier = token_verifier(s)
    steps.append(
        AuthGuard(
            fail_limit=s.auth_fail_limit,
            window=s.auth_fail_window,
            cooldown=s.auth_fail_cooldown,
            user_rate=s.user_rate,
            user_burst=s.user_burst,
            is_accepted=acceptance_check(app),
            proves_itself=verifier.proves if verifier is not None else None,
            stats=app.stats,
        )
    )
    if verifier is not None:
        steps.append(JwtCheck(verifier, app.stats))
    if refuses_uncredentialed(s):
        steps.append(RequireToken())
    return Pipeline(steps, app, app.stats)


def uvicorn_options(s: Settings) -> dict[str, Any]:
    """uvicorn settings for the limits and TLS (merged over the CLI's own)."""
    options = server.ServerOptions(
        max_url_bytes=s.max_url_bytes,
        max_head_bytes=s.max_header_bytes,
        head_timeout=s.header_timeout,
        # X-Forwarded-For is believed only from the configured balancers (by
        # default uvicorn believes it from 127.0.0.1, so any local process
        # could pick the address the guard charges: docs/hardening.md).
        forwarded_allow_ips=tuple(trusted_proxies(s.forwarded_allow_ips)),
    )
    return {
        # The protocol rewrites the client itself: uvicorn's middleware
        # would hide the pipeline from it.
        "proxy_headers": False,
        # The limits travel with the factory (pickled to --workers children).
        "http": server.protocol(options),
        "timeout_keep_alive": s.keep_alive_timeout,
        "limit_concurrency": s.max_connections or None,
        # uvicorn's own access log prints the query string as is; ours redacts.
        "access_log": False,
        **tls.server_options(s),
    }


def configure_access_log() -> None:
    """The access log's lines go to stdout, one JSON object each (whether
    they are written is the step's ``enabled``: a reload may switch it)."""
    logger = logging.getLogger("cacheproxy.access")
    logger.propagate = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)


def serving(source: Source, loaded: Loaded) -> Pipeline:
    """The hardened application of a serving process, which reloads on
    SIGHUP (:mod:`cacheproxy.ops.lifecycle`) once it has started."""
    app = CacheProxyApp(loaded.settings, rules=loaded.rules)
    pipeline = wrap(app)
    reloader = Reloader(source, loaded.settings, reload_into(pipeline, app))
    app.on_startup.append(reloader.install)
    return pipeline


def reload_into(pipeline: Pipeline, app: CacheProxyApp) -> Callable[[Settings, RuleSet], None]:
    """What a reload changes in a running process: the rules and the
    :data:`~cacheproxy.ops.lifecycle.LIVE` settings, the routes' scopes
    with them (new rules, ``private_data`` or ``slurm_conf``; routes the
    audit demoted stay demoted)."""

    def apply(s: Settings, rules: RuleSet) -> None:
        app.settings = s
        app.rules = rules
        if app.proxy is not None:
            app.proxy.rules = rules
            app.proxy.scopes.reconfigure(
                rules.rules, private_data=s.private_data, slurm_conf=s.slurm_conf
            )
        for step in pipeline.steps:
            if isinstance(step, AccessLog):
                step.enabled = s.access_log
        logfmt.set_level(s.log_level)

    return apply


def create_app_from_env() -> Pipeline:
    """uvicorn factory for ``--workers N``: each worker reads the parent's
    sources again (so a rolling restart on SIGHUP picks up changed files); a
    bad file stops this worker before it serves, with one line."""
    raw = os.environ.get(SETTINGS_ENV)
    source = Source() if raw is None else Source.from_json(raw)
    try:
        loaded = load(source)
    except (SettingsError, RuleError) as exc:
        logging.getLogger("cacheproxy").error("worker not started: %s", exc)
        raise SystemExit(STARTUP_FAILURE) from None
    return serving(source, loaded)
