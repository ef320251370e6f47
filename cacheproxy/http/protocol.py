"""The HTTP/1.1 server protocol ``cacheproxy serve`` runs.

uvicorn's httptools protocol with the head limits of
:mod:`cacheproxy.httplimits`, plus the fast lane (:mod:`cacheproxy.fastlane`):
when a request head is parsed, the application may answer it at once with a
cached response, written straight to the socket as uvicorn's own ``send``
would write it (status line, uvicorn's default headers, then the response's),
with no task and no ASGI cycle.

The lane is used only where it changes nothing but the cost: a keep-alive
``GET`` whose turn it is (uvicorn starts pipelined requests in order), not
over the concurrency limit, with no ``Expect``, uvicorn's own access log not
configured on (``cacheproxy serve`` turns it off and has its own; a handler
that merely exists on ``uvicorn.access``, as pytest attaches one to every
non-propagating logger, does not count), and a socket that is not closing
nor over its write high-water mark.  Everything
else, and every request the application declines, takes the ASGI path.  The
response completes exactly as uvicorn completes one (``on_response``: the
keep-alive timer, the next pipelined request, the head timer).

Over uvicorn's ``limit_concurrency`` the refusal is also written here, as a
503 in slurmrestd's JSON error shape with ``Retry-After`` (uvicorn's own is
plain text), and the connection is closed.

This relies on one uvicorn internal, ``HttpToolsProtocol._start_asgi_task``
(uvicorn 0.45 and later, the version ``pyproject.toml`` requires); without
it the lane stays off and a warning says so.  ``tests/core/test_fastlane.py`` fails if
the lane does not engage with the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, MutableMapping
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cacheproxy.core import errors
from cacheproxy.http.fastlane import (
    FORWARDING,
    HANDOVER,
    FastResponder,
    FastResult,
    HitResponse,
    Rewrite,
    responder_of,
)
from cacheproxy.http.httplimits import LimitedHttpToolsProtocol, raw_error

log = logging.getLogger("cacheproxy")

_JOIN_BELOW = 16 * 1024
"""Bodies up to this size are joined to the head (one buffer is the cheapest
write); larger ones go out beside it in the same system call (``writev``),
uncopied (a hit copies no body)."""

LANE_SUPPORTED = hasattr(HttpToolsProtocol, "_start_asgi_task")
if not LANE_SUPPORTED:  # pragma: no cover - depends on the installed uvicorn
    log.warning("this uvicorn has no _start_asgi_task: the fast lane is off")


def lane_of(app: object) -> FastResponder | None:
    """The fast lane of the application uvicorn serves.

    uvicorn may wrap it in its proxy-headers middleware, which only rewrites
    the client address and scheme (the lane applies the same rewrite first:
    :func:`forwarding_of`).  Any other wrapper is unknown, so it turns the
    lane off.
    """
    while isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    return responder_of(app) if LANE_SUPPORTED else None


def forwarding_of(app: object) -> Rewrite | None:
    """The rewrite uvicorn's proxy-headers middleware around ``app`` makes
    to a request's scope on the ASGI path (client address and scheme from
    ``X-Forwarded-For`` and ``X-Forwarded-Proto``, for trusted peers), made
    in place and at once; None when uvicorn wraps no such middleware.

    Why: the lane must see the request as the ASGI path does (the client
    slurmrestd is told of, the client logged).  uvicorn's own middleware
    does it, wrapped around an app that returns at once, so the rules are
    uvicorn's and not a copy; applied twice (the ASGI path runs it again
    for a request the lane declines) it gives the same scope.
    """
    rewriters: list[ProxyHeadersMiddleware] = []
    while isinstance(app, ProxyHeadersMiddleware):
        rewriter = ProxyHeadersMiddleware(_nothing)
        rewriter.trusted_hosts = app.trusted_hosts
        rewriters.append(rewriter)
        app = app.app
    if not rewriters:
        return None

    def rewrite(scope: MutableMapping[str, Any]) -> None:
        for rewriter in rewriters:
            step = rewriter(scope, _nothing, _nothing)  # type: ignore[arg-type]
            try:
                step.send(None)
            except StopIteration:
                continue
            step.close()
            raise RuntimeError("uvicorn's proxy-headers middleware did not complete at once")

    return rewrite


async def _nothing(*_: Any) -> Any:
    return None


class CacheProxyProtocol(LimitedHttpToolsProtocol):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lane = lane_of(self.app)
        self._forwarding = forwarding_of(self.app)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is not self.app:
            # uvicorn's limit_concurrency answer: ours, in slurmrestd's shape.
            self._over_limit(cycle)
            return
        if self._lane is not None:
            result = self._fast_response(cycle)
            if isinstance(result, tuple):
                self._write_response(cycle, result)
                return
            if result is not None:
                task = self.loop.create_task(self._answer_later(cycle, app, result))
                task.add_done_callback(self.tasks.discard)
                self.tasks.add(task)  # uvicorn's shutdown waits for these
                return
        super()._start_asgi_task(cycle, app)

    def _fast_response(self, cycle: Any) -> FastResult:
        """The lane's answer, or None for the ASGI path.  Any fault here is
        the lane's own: it is logged, the lane is switched off for this
        connection, and the ASGI path answers (never the reason a request
        fails)."""
        lane = self._lane
        try:
            if (
                lane is None
                or not cycle.keep_alive
                or cycle.waiting_for_100_continue
                or (cycle.access_log and self.config.access_log)
                or self.flow.write_paused
                or self.transport.is_closing()
            ):
                return None
            scope = cycle.scope
            if self._forwarding is not None:
                scope[FORWARDING] = self._forwarding
            return lane(scope)
        except Exception:
            self._lane_failed()
            return None

    async def _answer_later(
        self, cycle: Any, app: Any, pending: Awaitable[HitResponse | None]
    ) -> None:
        """A lane answer that awaits the store.  Until it is written the
        cycle is in progress, so uvicorn queues pipelined requests behind it
        as it does behind an ASGI task."""
        try:
            response = await pending
        except Exception:
            self._lane_failed()
            response = None
        if response is None:
            # Even for a client that left meanwhile: the lane may have handed
            # the ASGI path something to finish (an upstream answer to drain
            # and release), and a cycle knows its client is gone.
            if HANDOVER in cycle.scope:
                app = _releasing(app)
            super()._start_asgi_task(cycle, app)
            return
        if cycle.disconnected or self.transport.is_closing():
            return
        if self.flow.write_paused:
            await self.flow.drain()
            if cycle.disconnected:
                return
        self._write_response(cycle, response)

    def _over_limit(self, cycle: Any) -> None:
        self.transport.write(raw_error(errors.TOO_MANY_CONNECTIONS, [(b"retry-after", b"1")]))
        cycle.response_started = True
        cycle.response_complete = True
        cycle.keep_alive = False
        self.transport.close()
        cycle.on_response()

    def _lane_failed(self) -> None:
        log.exception("fast lane failed; the ASGI path answers on this connection")
        self._lane = None

    def _write_response(self, cycle: Any, response: HitResponse) -> None:
        status, headers, body = response
        parts = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:  # lower case, as uvicorn's send writes them
            parts += (name.lower(), b": ", value, b"\r\n")
        parts.append(b"\r\n")
        transport: asyncio.Transport = self.transport
        if len(body) <= _JOIN_BELOW:
            parts.append(body)
            transport.write(b"".join(parts))
        else:  # one writev, the body uncopied
            transport.writelines((b"".join(parts), body))
        cycle.response_started = True
        cycle.response_complete = True
        cycle.on_response()


def _releasing(app: Any) -> Any:
    """``app``, then the release of what the lane handed over (a no-op once
    the ASGI path took it), however the ASGI path ended."""

    async def run(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            handover = scope.get(HANDOVER)
            if handover is not None:
                await handover.release()

    return run
