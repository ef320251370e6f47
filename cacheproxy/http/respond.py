"""The ASGI types, and the answers the proxy gives without slurmrestd.

Refusals are in slurmrestd's JSON error shape (see :mod:`cacheproxy.core.errors`)
or, for authentication failures, exactly like slurmrestd's own (``401
text/plain`` "Authentication failure"), so a client cannot tell a local
refusal from slurmrestd's.  Each is built once as a whole :data:`Response`
(the pipeline's unit, :mod:`cacheproxy.http.pipeline`) and sent through ASGI
by :func:`send_response` where a cycle is running.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cacheproxy.core import errors
from cacheproxy.core.headers import cache_status
from cacheproxy.upstream.base import Headers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
"""A whole response: status, headers (a fresh list the caller may extend), body."""

AUTH_FAILURE = b"Authentication failure"
"""slurmrestd's body for a refused credential (401, text/plain)."""


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """A ``Retry-After`` header: whole seconds, at least one."""
    return (b"retry-after", b"%d" % max(1, math.ceil(seconds)))


def error_response(err: errors.ProxyError, outcome: str, extra: Headers | None = None) -> Response:
    """``err`` in slurmrestd's JSON error shape, marked in Cache-Status with
    ``outcome`` (e.g. ``fwd=request; detail=method``)."""
    status, hdrs, body = errors.error_response(err, [cache_status(outcome), *(extra or ())])
    return status, list(hdrs), body


def auth_failure(detail: str) -> Response:
    """The answer slurmrestd gives a refused credential."""
    return (
        401,
        [
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(AUTH_FAILURE)),
            (b"cache-status", b"cacheproxy; detail=" + detail.encode()),
        ],
        AUTH_FAILURE,
    )


async def send_response(send: Send, response: Response) -> None:
    """A whole response through ASGI ``send``."""
    status, headers, body = response
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, err: errors.ProxyError, outcome: str, extra: Headers | None = None
) -> None:
    """:func:`error_response`, sent."""
    await send_response(send, error_response(err, outcome, extra))
