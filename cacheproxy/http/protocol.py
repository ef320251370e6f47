"""The HTTP/1.1 server protocol ``cacheproxy serve`` runs.

uvicorn's httptools protocol with the head limits of
:mod:`cacheproxy.http.httplimits`, running the request pipeline
(:mod:`cacheproxy.http.pipeline`) itself as soon as a request head is
parsed.  When the pipeline completes without awaiting (a fresh hit from the
in-process store), or after awaiting without needing a request or response
stream (a Redis-tier hit, a small forwarded GET), its whole response is
written straight to the socket as uvicorn's own ``send`` would write it
(status line, uvicorn's default headers, then the response's), with no ASGI
cycle; what needs one (a body to read or stream) continues in uvicorn's cycle,
with the same exchange: nothing is decided twice.

A whole response is written here only where that changes nothing but the
cost: a keep-alive request whose turn it is (uvicorn starts pipelined
requests in order), not over the concurrency limit, with no ``Expect``,
uvicorn's own access log not configured on (``cacheproxy serve`` turns it off
and has its own; a handler that merely exists on ``uvicorn.access``, as
pytest attaches one to every non-propagating logger, does not count), and a
socket that is not closing nor over its write high-water mark; otherwise it
is sent through a cycle.  The response completes exactly as uvicorn completes
one (``on_response``: the keep-alive timer, the next pipelined request, the
head timer).

Over uvicorn's ``limit_concurrency`` the refusal is also written here, as a
503 in slurmrestd's JSON error shape with ``Retry-After`` (uvicorn's own is
plain text), and the connection is closed.

This relies on uvicorn internals (``HttpToolsProtocol._start_asgi_task``,
``flow``, ``pipeline``, ``server_state``; uvicorn 0.45 and later, the version
``pyproject.toml`` requires); without ``_start_asgi_task`` the protocol is
uvicorn's own and a warning says so.  ``tests/core/test_fastlane.py`` fails if
the lane does not engage with the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cacheproxy.core import errors
from cacheproxy.http.httplimits import LimitedHttpToolsProtocol, raw_error
from cacheproxy.http.pipeline import Answer, Continue, Exchange, Pipeline, continue_asgi
from cacheproxy.http.respond import Response, send_response

log = logging.getLogger("cacheproxy")

_JOIN_BELOW = 16 * 1024
"""Bodies up to this size are joined to the head (one buffer is the cheapest
write); larger ones go out beside it in the same system call (``writev``),
uncopied (a hit copies no body)."""

LANE_SUPPORTED = hasattr(HttpToolsProtocol, "_start_asgi_task")
if not LANE_SUPPORTED:  # pragma: no cover - depends on the installed uvicorn
    log.warning("this uvicorn has no _start_asgi_task: the protocol writes no answer itself")


def pipeline_of(app: object) -> Pipeline | None:
    """The pipeline uvicorn serves, or None (any other application takes
    uvicorn's own path, untouched).

    uvicorn may wrap it in its proxy-headers middleware, which only rewrites
    the client address and scheme (the protocol makes the same rewrite:
    :func:`forwarding_of`).  Any other wrapper is unknown.
    """
    while isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    return app if LANE_SUPPORTED and isinstance(app, Pipeline) else None


def forwarding_of(app: object) -> Callable[[MutableMapping[str, Any]], None] | None:
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
        self._pipeline = pipeline_of(self.app)
        self._forwarding = forwarding_of(self.app)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is not self.app:
            # uvicorn's limit_concurrency answer: ours, in slurmrestd's shape.
            self._over_limit(cycle)
            return
        pipeline = self._pipeline
        if pipeline is None:
            super()._start_asgi_task(cycle, app)
            return
        scope = cycle.scope
        if self._forwarding is not None:  # as uvicorn's middleware would
            self._forwarding(scope)
        ex = Exchange()  # (Exchange.of, inlined: the hit path)
        ex.scope = scope
        answer = pipeline.run(ex)
        if type(answer) is tuple:
            self._answer(cycle, ex, answer)
        elif isinstance(answer, Continue):
            super()._start_asgi_task(cycle, continue_asgi(answer))
        else:
            task = self.loop.create_task(self._answer_later(cycle, ex, answer))  # type: ignore[arg-type]
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)  # uvicorn's shutdown waits for these

    def _answer(self, cycle: Any, ex: Exchange, response: Response) -> None:
        """A whole response: written here when nothing calls for uvicorn's
        own writing (see the module docstring), else sent through a cycle."""
        if (
            not cycle.keep_alive
            or cycle.waiting_for_100_continue
            or (cycle.access_log and self.config.access_log)
            or self.flow.write_paused
            or self.transport.is_closing()
        ):
            super()._start_asgi_task(cycle, continue_asgi(Continue(_sending(response))))
            return
        self._write_response(cycle, response)
        lane = ex.lane
        if lane is not None:
            if lane == "hit":
                self._pipeline.stats.fast_hits += 1  # type: ignore[union-attr]
            else:
                self._pipeline.stats.fast_forwards += 1  # type: ignore[union-attr]

    def _count(self, ex: Exchange) -> None:
        """A hit or a forward answered without an ASGI cycle."""
        stats = self._pipeline.stats  # type: ignore[union-attr]
        if ex.lane == "hit":
            stats.fast_hits += 1
        elif ex.lane == "forward":
            stats.fast_forwards += 1

    async def _answer_later(self, cycle: Any, ex: Exchange, pending: Awaitable[Answer]) -> None:
        """An answer that awaited something (the store, upstream, a step).
        Until it is written the cycle is in progress, so uvicorn queues
        pipelined requests behind it as it does behind an ASGI task."""
        answer = await pending  # (the pipeline's safety net: it does not raise)
        if isinstance(answer, Continue):
            # Even for a client that left meanwhile: what it holds (an
            # upstream answer) is released there, and a cycle knows its
            # client is gone.
            super()._start_asgi_task(cycle, continue_asgi(answer))
            return
        if cycle.disconnected or self.transport.is_closing():
            self._count(ex)  # answered, for a client gone (as the ASGI path would)
            return
        if self.flow.write_paused:
            await self.flow.drain()
            if cycle.disconnected:
                self._count(ex)
                return
        self._answer(cycle, ex, answer)

    def _over_limit(self, cycle: Any) -> None:
        self.transport.write(raw_error(errors.TOO_MANY_CONNECTIONS, [(b"retry-after", b"1")]))
        cycle.response_started = True
        cycle.response_complete = True
        cycle.keep_alive = False
        self.transport.close()
        cycle.on_response()

    def _write_response(self, cycle: Any, response: Response) -> None:
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


def _sending(response: Response) -> Any:
    async def run(receive: Any, send: Any) -> None:
        await send_response(send, response)

    return run
