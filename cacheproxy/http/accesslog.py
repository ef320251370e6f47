"""The outermost middleware: request ids, the JSON access log, a safety net.

* ``X-Request-ID``: a client's id is kept when it is sane (at most 128 of
  ``[A-Za-z0-9._-]``, given once), else one is made.  It goes upstream (it is
  an ordinary end-to-end header to the proxy) and back to the client, so one
  id follows a request through the proxy's and slurmrestd's logs.
* Access log (opt-in, ``access_log``): one JSON object per line on the
  ``cacheproxy.access`` logger.  It never holds a token, a cookie, an
  ``Authorization`` header or a body: only the method, the path and query
  (with secret-looking query values and anything shaped like a JWT replaced),
  the status, sizes, timing, the Cache-Status and the claimed user name.
* Safety net: an unexpected exception before the response started becomes a
  503 in slurmrestd's JSON error shape instead of uvicorn's bare
  ``500 Internal Server Error``; it is counted (``internal_errors``) and
  logged as a traceback *without* the exception's message, which could quote
  a header.  After the response started it is re-raised, so uvicorn drops the
  connection and the client sees a truncated response, never a complete-looking
  wrong one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import traceback
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from cacheproxy.core import errors
from cacheproxy.http.fastlane import FORWARDING, FastResult, HitResponse, responder_of
from cacheproxy.http.respond import ASGIApp, Message, Receive, Scope, Send, send_error
from cacheproxy.stats import Stats

log = logging.getLogger("cacheproxy")
access_log = logging.getLogger("cacheproxy.access")

REQUEST_ID = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}\Z")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*(?:\.[A-Za-z0-9_=-]*)?")
_SECRET_NAME = re.compile(r"token|jwt|auth|pass|secret|key|cookie|session|sig", re.IGNORECASE)
_REDACTED = "[redacted]"
_MAX_FIELD = 2048


_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> bytes:
    """32 hex digits, unique per process and start: a random prefix and a
    counter (an id needs to be unique, not secret; no syscall per request)."""
    return _ID_PREFIX + b"%016x" % next(_ID_COUNTER)


def _with_request_id(message: Message, rid: bytes) -> Message:
    return {**message, "headers": _tagged(message.get("headers", []), rid)}


def _tagged(headers: Sequence[tuple[bytes, bytes]], rid: bytes) -> list[tuple[bytes, bytes]]:
    """Response headers ending with our request id; ours wins over any
    other (an echo may be a cached one)."""
    return _tag_in_place(list(headers), rid)


def _tag_in_place(headers: list[tuple[bytes, bytes]], rid: bytes) -> list[tuple[bytes, bytes]]:
    """:func:`_tagged`, on a list the caller owns (the lane's answers)."""
    for k, _ in headers:
        if k == REQUEST_ID:
            headers = [(k, v) for k, v in headers if k != REQUEST_ID]
            break
    headers.append((REQUEST_ID, rid))
    return headers


def _with_id_header(
    headers: list[tuple[bytes, bytes]], given: int, rid: bytes
) -> list[tuple[bytes, bytes]]:
    """Request headers with ``rid`` as the one request id (the ``given``
    ones were not usable: several, or not sane)."""
    if given:
        headers = [(k, v) for k, v in headers if k != REQUEST_ID]
    return [*headers, (REQUEST_ID, rid)]


def _given_request_id(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes | None, int]:
    """The client's request id when it gave one sane one (else None), and
    how many it gave: one scan for both paths."""
    rid: bytes | None = None
    count = 0
    for k, v in headers:
        if k == REQUEST_ID:
            count += 1
            rid = v
    if count != 1 or rid is None or not sane_request_id(rid):
        rid = None
    return rid, count


def sane_request_id(value: bytes) -> bool:
    return _SANE_ID.match(value) is not None


def redact(text: str) -> str:
    """Anything shaped like a JWT, replaced."""
    return _JWT_LIKE.sub(_REDACTED, text)


def redact_query(raw: bytes) -> str:
    """The query with values of secret-looking names (and JWTs) replaced."""
    if not raw:
        return ""
    parts = []
    for item in raw.decode("latin-1").split("&"):
        name, eq, _value = item.partition("=")
        if eq and _SECRET_NAME.search(name):
            item = f"{name}={_REDACTED}"
        parts.append(item)
    return redact("&".join(parts))[:_MAX_FIELD]


def _user(scope: Scope) -> str | None:
    for k, v in scope["headers"]:
        if k == b"x-slurm-user-name":
            return redact(v[:128].decode("latin-1"))
    return None


class RequestContext:
    """ASGI middleware; see the module docstring."""

    def __init__(
        self, app: ASGIApp, *, access_log_enabled: bool = False, stats: Stats | None = None
    ) -> None:
        self.app = app
        self.access_log = access_log_enabled
        self.stats = stats if stats is not None else Stats()
        self._inner_fast = responder_of(app)

    def fast_response(self, scope: Scope) -> FastResult:
        """See :mod:`cacheproxy.fastlane`: the request id and the access log
        line, as :meth:`__call__` gives them."""
        inner = self._inner_fast
        if inner is None:
            return None
        rid, count = _given_request_id(scope["headers"])
        if rid is None:
            # In the scope, as on the ASGI path: a GET the lane forwards
            # carries it upstream, and the ASGI path, should the lane decline,
            # finds it there and keeps it.
            rid = _new_request_id()
            if count:
                scope["headers"] = _with_id_header(scope["headers"], count, rid)
            else:  # this request's own list (uvicorn makes one per request)
                scope["headers"].append((REQUEST_ID, rid))
        started = time.perf_counter() if self.access_log else 0.0
        result = inner(scope)
        if result is None:
            return None
        if isinstance(result, tuple):
            return self._tag_fast(scope, result, rid, started)
        return self._tag_fast_later(scope, result, rid, started)

    async def _tag_fast_later(
        self,
        scope: Scope,
        pending: Awaitable[HitResponse | None],
        rid: bytes,
        started: float,
    ) -> HitResponse | None:
        response = await pending
        return None if response is None else self._tag_fast(scope, response, rid, started)

    def _tag_fast(
        self, scope: Scope, response: HitResponse, rid: bytes, started: float
    ) -> HitResponse:
        status, out, body = response
        out = _tag_in_place(out, rid)  # a fresh list, ours (fastlane.HitResponse)
        if self.access_log:
            rewrite = scope.get(FORWARDING)
            if rewrite is not None:  # the client, as the ASGI path logs it
                rewrite(scope)
            cache = next((v for k, v in out if k == b"cache-status"), b"")
            self._log(scope, rid, status, len(body), cache, started)
        return status, out, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, count = _given_request_id(scope["headers"])
        if rid is None:
            rid = _new_request_id()
            scope = {**scope, "headers": _with_id_header(scope["headers"], count, rid)}
        if self.access_log:
            await self._call_logged(scope, receive, send, rid)
            return
        request_id = rid
        started = False

        async def tagged(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = _with_request_id(message, request_id)
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception as exc:
            if started:
                raise  # the head is out: let uvicorn drop the connection
            await self._internal_error(exc, rid, tagged)

    async def _call_logged(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        """The same, plus one access log line per request."""
        started = time.perf_counter()
        status = 0
        sent = 0
        cache = b""

        async def wrapped(message: Message) -> None:
            nonlocal status, sent, cache
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", ()):
                    if k == b"cache-status":
                        cache = v
                message = _with_request_id(message, rid)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception as exc:
            if status:
                raise
            await self._internal_error(exc, rid, wrapped)
        finally:
            self._log(scope, rid, status, sent, cache, started)

    async def _internal_error(self, exc: Exception, rid: bytes, send: Send) -> None:
        self.stats.internal_errors += 1
        log.error(
            "internal error (request %s): %s\n%s",
            rid.decode(),
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        await send_error(send, errors.INTERNAL, "detail=internal-error")

    def _log(
        self, scope: Scope, rid: bytes, status: int, sent: int, cache: bytes, started: float
    ) -> None:
        client = scope.get("client")
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
        line: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": rid.decode(),
            "client": client[0] if client else "",
            "method": scope["method"],
            "path": redact(raw_path.decode("latin-1"))[:_MAX_FIELD],
            "query": redact_query(scope.get("query_string", b"")),
            "status": status,
            "bytes": sent,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "cache": cache.decode("latin-1").removeprefix("cacheproxy; "),
            "user": _user(scope),
        }
        access_log.info(orjson.dumps(line).decode())
