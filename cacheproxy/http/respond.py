"""Small helpers shared by the ASGI middlewares (guard, jwtcheck, accesslog).

They answer without the proxy: in slurmrestd's JSON error shape (see
:mod:`cacheproxy.errors`) or, for authentication failures, exactly like
slurmrestd does (``401 text/plain`` "Authentication failure"), so a client
cannot tell a local refusal from slurmrestd's own.
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

AUTH_FAILURE = b"Authentication failure"
"""slurmrestd's body for a refused credential (401, text/plain)."""


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """A ``Retry-After`` header: whole seconds, at least one."""
    return (b"retry-after", b"%d" % max(1, math.ceil(seconds)))


async def send_error(
    send: Send, err: errors.ProxyError, outcome: str, extra: Headers | None = None
) -> None:
    """Answer with ``err`` in slurmrestd's JSON error shape, marked in
    Cache-Status with ``outcome`` (e.g. ``fwd=request; detail=method``)."""
    status, hdrs, body = errors.error_response(err, [cache_status(outcome), *(extra or ())])
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_auth_failure(send: Send, detail: str) -> None:
    """Answer exactly as slurmrestd refuses a credential."""
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(AUTH_FAILURE)),
                (b"cache-status", b"cacheproxy; detail=" + detail.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": AUTH_FAILURE})
