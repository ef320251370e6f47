"""The fast lane: a fresh cache hit, or a GET passed through, answered
without an ASGI cycle.

Why: under uvicorn every request costs a task, a ``RequestResponseCycle``,
two ASGI message dicts, a ``send`` wrapper per middleware and uvicorn's
per-header checks; on a 2 KiB hit that machinery cost more than the cache's
own work (measured with py-spy: about 60% of the hit path).  Dashboards poll
the same few lists all day, so almost every request is such a hit.

How: the server protocol (:class:`cacheproxy.protocol.CacheProxyProtocol`)
asks the application for a *fast response* as soon as a request head is
parsed.  Every layer of the hardened application offers the same call,
``fast_response(scope) -> FastResult``, and either answers or steps aside:

    protocol -> RequestContext -> AuthGuard -> JwtCheck -> CacheProxyApp -> Proxy

* :class:`~cacheproxy.proxy.Proxy` answers only a fresh, valid hit on a
  credential already accepted; never a miss, a stale entry or a refusal.
  With the in-process tier it answers at once; with a store that must be
  awaited (the Redis tier) it answers with an awaitable, which the protocol
  runs as a small task of its own (still no ASGI cycle), and which yields
  None when the entry turns out not to be a hit: the request then takes the
  ASGI path, which reuses the lane's parse of the request and the store's
  answer (both left in the scope), so declining costs no second round trip;
* :class:`~cacheproxy.forward.Forwarder` forwards a GET the cache does not
  serve (no rule caches it): an awaitable of slurmrestd's answer when that is
  a success of known, moderate length; any other answer or fault is handed
  to the ASGI path in the scope (:data:`HANDOVER`), which relays it through
  every layer, so the guard sees every error status;
* :class:`~cacheproxy.guard.AuthGuard` steps aside while anything is blocked
  or when the per-user rate limit is on;
* :class:`~cacheproxy.jwtcheck.JwtCheck` steps aside for any token that fails
  local verification;
* :class:`~cacheproxy.accesslog.RequestContext` adds the request id and
  writes the access log line, as on the ASGI path.

``None`` is always safe: the request then takes the ordinary ASGI path,
which makes every decision itself (from the same parse and store answer).
So the fast lane can only make a hit cheaper, never change what any request
gets.  A layer that does not offer ``fast_response`` (an unknown middleware)
turns the lane off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

HitResponse = tuple[int, list[tuple[bytes, bytes]], bytes]
"""A response the lane answers: status, headers (a fresh list the caller
may extend), body."""

FastResult = HitResponse | Awaitable[HitResponse | None] | None
"""A hit's response now; or, when it must be awaited (a Redis-tier lookup,
a GET forwarded upstream), an awaitable of it (None: the ASGI path after
all); or None: the ASGI path."""

FastResponder = Callable[[MutableMapping[str, Any]], FastResult]
"""``fast_response(scope)``: see :data:`FastResult`."""


HANDOVER = "cacheproxy.handover"
"""Scope key: a :class:`Handover`, what a lane answer that came to None left
for the ASGI path to finish (an upstream answer to relay).  The protocol
releases it after the ASGI path, in case a layer answered before the one
that takes it (the guard refusing a client blocked meanwhile)."""


Rewrite = Callable[[MutableMapping[str, Any]], None]

FORWARDING = "cacheproxy.forwarding"
"""Scope key: a :data:`Rewrite` of this very scope as uvicorn's proxy-headers
middleware makes it on the ASGI path (client address and scheme from
``X-Forwarded-For`` and ``X-Forwarded-Proto``, for trusted peers); set by the
protocol when uvicorn wraps that middleware.  A layer that uses the client
or the scheme calls it first; it may be called again (it gives the same
scope).  Left for them to call, not made for every request: a hit uses
neither."""


class Handover(Protocol):
    async def release(self) -> None:
        """Free what is held, unless the ASGI path took it (then nothing)."""


def responder_of(app: object) -> FastResponder | None:
    """The fast lane of ``app``, or None when it has none (an app that does
    not offer one must see every request)."""
    responder: FastResponder | None = getattr(app, "fast_response", None)
    return responder
