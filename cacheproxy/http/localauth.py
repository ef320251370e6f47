"""Refusal of requests without a token to a unix-socket slurmrestd.

Why: slurmrestd tries its authentication plugins in turn.  ``rest_auth/jwt``
steps aside only for a request with none of ``X-SLURM-USER-TOKEN``,
``Authorization`` and ``X-SLURM-USER-NAME``; ``rest_auth/local`` then
authenticates the *connection*: over a unix socket it runs the request as
the peer's user, and the peer is the proxy.  So a client that sends no
credential at all would act as the proxy's own user (or, for a proxy running
as root, as any user it names).  Behind a unix-socket upstream the proxy
therefore answers such a request itself, exactly as slurmrestd refuses a
missing credential (``401 text/plain`` "Authentication failure", as 22.05
does), unless ``unix_upstream_jwt_only`` says that slurmrestd runs
``rest_auth/jwt`` only there.

A request carrying either token header (``X-SLURM-USER-TOKEN`` or
``Authorization``, whatever its value) is slurmrestd's JWT plugin's to judge
and passes; one with only a user name would be refused by that plugin anyway.
Over TCP ``rest_auth/local`` never applies, so nothing is refused there.  The
proxy's own endpoints are never forwarded and are not concerned.

The refusal is one step of the pipeline (``hardening.wrap``), counted by the
guard like any 401.
"""

from __future__ import annotations

from cacheproxy.core.identity import AUTHORIZATION, USER_TOKEN
from cacheproxy.http.pipeline import BaseStep, Exchange
from cacheproxy.http.respond import Response, auth_failure
from cacheproxy.ops.paths import OWN_PREFIX
from cacheproxy.settings import Settings
from cacheproxy.upstream.base import Headers


def refuses_uncredentialed(s: Settings) -> bool:
    """Whether requests without a token must be refused before forwarding."""
    return s.upstream.startswith("unix:") and not s.unix_upstream_jwt_only


def carries_token(headers: Headers) -> bool:
    """Whether slurmrestd's JWT plugin would judge this request's token."""
    return any(k in (USER_TOKEN, AUTHORIZATION) for k, _ in headers)


class RequireToken(BaseStep):
    """A step of the pipeline: 401 for a proxied request that carries no token."""

    def enter(self, ex: Exchange) -> Response | None:
        scope = ex.scope
        if scope["path"].startswith(OWN_PREFIX) or carries_token(scope["headers"]):
            return None
        return auth_failure("no-credential")
