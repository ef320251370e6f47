"""Wiring: the request pipeline's steps around :class:`~cacheproxy.http.app.CacheProxyApp`,
and the server's options.

From the socket inwards::

    CacheProxyProtocol         URL/head size (414/431), head timeout (408);
                               runs the pipeline, writes whole answers itself
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

import json
import logging
import os
import sys
from typing import Any

from cacheproxy import settings as settings_mod
from cacheproxy.http import httplimits, tls
from cacheproxy.http.accesslog import AccessLog, RequestContext
from cacheproxy.http.app import SETTINGS_ENV, CacheProxyApp
from cacheproxy.http.guard import AuthGuard, IsAccepted
from cacheproxy.http.jwtcheck import JwtCheck, token_verifier
from cacheproxy.http.localauth import RequireToken, refuses_uncredentialed
from cacheproxy.http.pipeline import Pipeline, Step
from cacheproxy.settings import Settings, trusted_proxies
from cacheproxy.upstream.base import Headers


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
    steps: list[Step] = [AccessLog()] if s.access_log else []
    steps.append(RequestContext())
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
    httplimits.configure(
        max_url_bytes=s.max_url_bytes,
        max_head_bytes=s.max_header_bytes,
        head_timeout=s.header_timeout,
    )
    proxies = trusted_proxies(s.forwarded_allow_ips)
    return {
        # X-Forwarded-For is believed only from the configured balancers: by
        # default uvicorn believes it from 127.0.0.1, so any local process
        # could pick the address the guard charges (docs/hardening.md).  The
        # protocol applies this same middleware's rewrite (protocol.py).
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
        # A string: --workers children import it (and configure() it again).
        "http": "cacheproxy.http.protocol:CacheProxyProtocol",
        "timeout_keep_alive": s.keep_alive_timeout,
        "limit_concurrency": s.max_connections or None,
        "h11_max_incomplete_event_size": s.max_header_bytes,
        # uvicorn's own access log prints the query string as is; ours redacts.
        "access_log": False,
        **tls.server_options(s),
    }


def configure_access_log(s: Settings) -> None:
    """JSON lines on stdout, one per request, when ``access_log`` is on."""
    logger = logging.getLogger("cacheproxy.access")
    logger.propagate = False
    if not s.access_log:
        logger.disabled = True
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)


def create_app_from_env() -> Pipeline:
    """uvicorn factory for ``--workers N``: the parent's settings, hardened."""
    raw = os.environ.get(SETTINGS_ENV)
    s = settings_mod.load() if raw is None else settings_mod.load(cli=json.loads(raw), env={})
    app = CacheProxyApp(s)
    uvicorn_options(app.settings)  # configure the protocol limits in this child
    configure_access_log(app.settings)
    return wrap(app)
