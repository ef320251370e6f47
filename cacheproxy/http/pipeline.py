"""One request pipeline: each concern a step, written once, run for every
request whether its answer is written straight to the socket or not.

A request is an :class:`Exchange` (its context, handed from step to step;
nothing travels in the ASGI scope).  The steps run in order; each one's
``enter(ex)`` either passes (None), answers at once (a :data:`Response`: a
refusal), or must await something first (an awaitable of either).  After the
last step the handler (:class:`~cacheproxy.http.app.CacheProxyApp`) answers:
a whole :data:`Response` (a fresh hit, from a store read without awaiting),
an awaitable of one, or a :class:`Continue`: the part of the answer that
needs the ASGI cycle (a request body to read, a body to stream).

Whatever answered, the response head goes back out through every step that
was entered, innermost first (``leave``: the guard counts failures, the
request id is added, the access log notes the status), and the access log's
line is written at the end (``done``).  So a fresh hit from the in-process
store is this same pipeline completing without awaiting: the server protocol
(:mod:`cacheproxy.http.server`) writes its :data:`Response` itself, with no
task and no ASGI cycle; served by any other ASGI server, :meth:`Pipeline.__call__`
sends the very same response through ``send``.

The safety net is here too: an exception before the response started becomes
a 503 in slurmrestd's JSON error shape (never uvicorn's bare 500), counted
and logged without its message (which could quote a header); after the head
went out it is re-raised, so the client sees a cut response, never a
complete-looking wrong one.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from cacheproxy.core import errors
from cacheproxy.core.headers import RequestView
from cacheproxy.http.respond import (
    ASGIApp,
    Message,
    Receive,
    Response,
    Scope,
    Send,
    error_response,
    send_response,
)
from cacheproxy.stats import Stats

log = logging.getLogger("cacheproxy")


class Continue:
    """The rest of an answer that needs the ASGI cycle: ``run(receive, send)``."""

    __slots__ = ("run",)

    def __init__(self, run: Callable[[Receive, Send], Awaitable[None]]) -> None:
        self.run = run


Answer = Response | Continue
Verdict = Response | Awaitable[Response | None] | None
"""A step's ``enter``: pass on (None), answer now, or await first."""
Outcome = Response | Continue | Awaitable[Answer]
"""The handler's answer, or the pipeline's."""


class Exchange:
    """One request's context, handed from step to step.

    Made per request without an ``__init__`` (``Exchange.of(scope)``): the
    fields below are class-level defaults until a step sets them."""

    scope: Scope
    rid: bytes = b""
    """The request id (set by the request-id step)."""
    entered: int = 0
    """How many steps were entered: those the response head leaves through."""
    status: int = 0
    cache: bytes = b""
    """The response's Cache-Status (for the access log)."""
    outcome: str | None = None
    """The metrics' cache outcome, when the handler knows it already (a
    fresh hit: ``hit``); None: the access log reads it from Cache-Status."""
    rule: str = "-"
    """The name of the rule the request matched (set by the proxy; '-': none)."""
    sent: int = 0
    started: float = 0.0
    watch_body: bool = False
    """A step asked to see the response's first body chunk (the guard, a 500)."""
    lane: str | None = None
    """What the handler answered with, for the lane's counters: ``hit``,
    ``forward`` (None: anything else)."""
    view: RequestView | None = None
    """The request's headers as forwarded, scanned once (by the request-id
    step; None: the planner scans them)."""

    @classmethod
    def of(cls, scope: Scope) -> Exchange:
        ex = cls()
        ex.scope = scope
        return ex


class Step(Protocol):
    """One concern of the pipeline (see the module docstring)."""

    def enter(self, ex: Exchange) -> Verdict: ...

    def leave(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def first_body(self, ex: Exchange, body: bytes) -> None: ...

    def done(self, ex: Exchange) -> None: ...


class BaseStep:
    """A step that does nothing but pass: subclasses override what they need."""

    leaves_on: frozenset[int] | None = None
    """The statuses :meth:`leave` is called for (None: every one)."""

    def enter(self, ex: Exchange) -> Verdict:
        return None

    def leave(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        return None

    async def first_body(self, ex: Exchange, body: bytes) -> None:
        return None

    def done(self, ex: Exchange) -> None:
        return None


class Handler(Protocol):
    """What answers once every step passed; also serves the lifespan."""

    def respond(self, ex: Exchange) -> Outcome: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class AsgiHandler:
    """Any ASGI application as the pipeline's handler (it always continues)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def respond(self, ex: Exchange) -> Outcome:
        scope, app = ex.scope, self.app
        return Continue(lambda receive, send: app(scope, receive, send))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class Pipeline:
    """The steps and the handler; an ASGI application too (see the module docstring)."""

    def __init__(self, steps: Sequence[Step], handler: Handler, stats: Stats | None = None) -> None:
        self.steps = tuple(steps)
        self.handler = handler
        self.stats = stats if stats is not None else Stats()
        self._count = len(self.steps)
        self._enters = tuple(s.enter for s in self.steps)
        # Bound once, innermost first, only the hooks a step has: a response
        # that went through every step leaves by these (the hit path).
        self._leaves = tuple(
            (s.leave, getattr(s, "leaves_on", None))
            for s in reversed(self.steps)
            if type(s).leave is not BaseStep.leave
        )
        self._dones = tuple(
            s.done for s in reversed(self.steps) if type(s).done is not BaseStep.done
        )

    # -- running -------------------------------------------------------------
    def run(self, ex: Exchange, start: int = 0) -> Outcome:
        """The request's answer: whole at once when nothing had to be
        awaited, else an awaitable of it, or a :class:`Continue`.  (From
        step ``start``: the rest of a request a step had to await.)"""
        enters, count = self._enters, self._count
        i = start
        try:
            while i < count:  # (no range object: this runs for every request)
                verdict = enters[i](ex)
                if verdict is not None:
                    ex.entered = i + 1
                    if type(verdict) is tuple:
                        return self._finish(ex, verdict)
                    return self._resume(ex, i + 1, verdict)  # type: ignore[arg-type]
                i += 1
            ex.entered = count
            answer = self.handler.respond(ex)
            if type(answer) is tuple:
                return self._finish(ex, answer)
            if isinstance(answer, Continue):
                return self._continue(ex, answer)
            return self._answered_later(ex, answer)  # type: ignore[arg-type]
        except Exception as exc:
            ex.entered = i  # the steps before the one that failed were entered
            return self._failed(ex, exc)

    async def _resume(
        self, ex: Exchange, start: int, pending: Awaitable[Response | None]
    ) -> Answer:
        try:
            verdict = await pending
            if verdict is not None:
                return self._finish(ex, verdict)
            outcome = self.run(ex, start)
            while not (type(outcome) is tuple or isinstance(outcome, Continue)):
                outcome = await outcome  # type: ignore[misc]
            return outcome
        except Exception as exc:
            return self._failed(ex, exc)

    async def _answered_later(self, ex: Exchange, pending: Awaitable[Answer]) -> Answer:
        try:
            answer = await pending
        except Exception as exc:
            return self._failed(ex, exc)
        if type(answer) is tuple:
            return self._finish(ex, answer)
        return self._continue(ex, answer)  # type: ignore[arg-type]

    def _finish(self, ex: Exchange, response: Response) -> Answer:
        """A whole response leaves through the entered steps; the access log
        line is written at once.  (A 500 whose body a step must read first
        takes the ASGI cycle instead.)"""
        status, headers, body = response
        ex.status = status
        everyone = ex.entered == self._count
        if everyone:  # every step was entered (inlined: the hit path)
            for leave, statuses in self._leaves:
                if statuses is None or status in statuses:
                    leave(ex, status, headers)
        else:
            self._leave(ex, status, headers)
        if ex.watch_body:
            return self._continue(ex, Continue(_sender(response)), left=True)
        ex.sent = len(body)
        if everyone:
            for done in self._dones:
                done(ex)
        else:
            self._done(ex)
        return response

    def _leave(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        ex.status = status
        if ex.entered == self._count:
            for leave, statuses in self._leaves:
                if statuses is None or status in statuses:
                    leave(ex, status, headers)
            return
        steps = self.steps
        for i in range(ex.entered - 1, -1, -1):
            statuses = getattr(steps[i], "leaves_on", None)
            if statuses is None or status in statuses:
                steps[i].leave(ex, status, headers)

    def _done(self, ex: Exchange) -> None:
        if ex.entered == self._count:
            for done in self._dones:
                done(ex)
            return
        steps = self.steps
        for i in range(ex.entered - 1, -1, -1):
            steps[i].done(ex)

    def _continue(self, ex: Exchange, cont: Continue, *, left: bool = False) -> Continue:
        """``cont`` with the response head leaving through the steps, the
        safety net, and the access log line at the end."""
        leave, steps = self._leave, self.steps

        async def run(receive: Receive, send: Send) -> None:
            head_sent = left
            first_body = True

            async def wrapped(message: Message) -> None:
                nonlocal head_sent, first_body
                kind = message["type"]
                if kind == "http.response.start":
                    if not head_sent:
                        headers = list(message.get("headers", ()))
                        leave(ex, message["status"], headers)
                        message = {**message, "headers": headers}
                    head_sent = True
                elif kind == "http.response.body":
                    body = message.get("body", b"")
                    ex.sent += len(body)
                    if first_body and ex.watch_body:
                        first_body = False
                        for i in range(ex.entered - 1, -1, -1):
                            await steps[i].first_body(ex, bytes(body)[:4096])
                await send(message)

            try:
                await cont.run(receive, wrapped)
            except Exception as exc:
                if ex.status:
                    raise  # the head is out: let the server drop the connection
                await _sender(self._internal_error(ex, exc))(receive, wrapped)
            finally:
                self._done(ex)

        return Continue(run)

    def _failed(self, ex: Exchange, exc: Exception) -> Answer:
        """The safety net, for a fault before anything was sent."""
        return self._finish(ex, self._internal_error(ex, exc))

    def _internal_error(self, ex: Exchange, exc: Exception) -> Response:
        self.stats.internal_errors += 1
        log.error(
            "internal error (request %s): %s\n%s",
            ex.rid.decode(),
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        return error_response(errors.INTERNAL, "detail=internal-error")

    # -- served by any ASGI server ----------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.handler(scope, receive, send)
            return
        answer = self.run(Exchange.of(scope))
        while not (type(answer) is tuple or isinstance(answer, Continue)):
            answer = await answer  # type: ignore[misc]
        if isinstance(answer, Continue):
            await answer.run(receive, send)
        else:
            await _sender(answer)(receive, send)


def _sender(response: Response) -> Callable[[Receive, Send], Awaitable[None]]:
    """Sending a whole response through ASGI ``send``."""

    async def run(receive: Receive, send: Send) -> None:
        await send_response(send, response)

    return run
