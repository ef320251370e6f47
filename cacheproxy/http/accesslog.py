"""The pipeline's first steps: request ids, and the JSON access log.

* ``X-Request-ID``: a client's id is kept when it is sane (at most 128 of
  ``[A-Za-z0-9._-]``, given once), else one is made.  It goes upstream (it is
  an ordinary end-to-end header to the proxy) and back to the client, so one
  id follows a request through the proxy's and slurmrestd's logs.
* Every request, whether the access log is on or not, is counted for the
  client-facing metrics (status class and duration by rule and cache
  outcome: :meth:`cacheproxy.stats.Stats.observe_response`), by the same step
  that writes the access log, which sees the whole request anyway.
* Access log (opt-in, ``access_log``, switchable by a reload): one JSON
  object per line on the ``cacheproxy.access`` logger, in the application
  log's format (:mod:`cacheproxy.ops.logfmt`), with the matched rule's
  name.  It never holds a token, a cookie, an ``Authorization`` header or a
  body: only the method, the path and query
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
from typing import Any

import orjson

from cacheproxy.core import policy
from cacheproxy.core.headers import REQUEST_ID, RequestView
from cacheproxy.http.pipeline import BaseStep, Exchange
from cacheproxy.http.respond import Scope
from cacheproxy.ops.logfmt import request_id, timestamp
from cacheproxy.stats import Stats

log = logging.getLogger("cacheproxy")
access_log = logging.getLogger("cacheproxy.access")

_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}\Z")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*(?:\.[A-Za-z0-9_=-]*)?")
_SECRET_NAME = re.compile(r"token|jwt|auth|pass|secret|key|cookie|session|sig", re.IGNORECASE)
_REDACTED = "[redacted]"
_MAX_FIELD = 2048


# A request id made here is 32 hex digits, unique per process and start: a
# random prefix and a counter (an id needs to be unique, not secret; no
# syscall per request).
_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(1)


def _with_id_header(
    headers: list[tuple[bytes, bytes]], given: int, rid: bytes
) -> list[tuple[bytes, bytes]]:
    """Request headers with ``rid`` as the one request id (the ``given``
    ones were not usable: several, or not sane)."""
    if given:
        headers = [(k, v) for k, v in headers if k != REQUEST_ID]
    return [*headers, (REQUEST_ID, rid)]


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
    name = policy.header_value(scope["headers"], b"x-slurm-user-name")
    return None if name is None else redact(name[:128].decode("latin-1"))


class RequestContext(BaseStep):
    """The pipeline's request-id step; see the module docstring."""

    def enter(self, ex: Exchange) -> None:
        scope = ex.scope
        headers = scope["headers"]
        # The one scan of the request's headers (the planner reads this view).
        view = ex.view = RequestView(headers)
        rid = view.request_id
        count = view.request_ids
        if count != 1 or rid is None or not sane_request_id(rid):
            # In the request's headers: it goes upstream with the request.
            rid = _ID_PREFIX + b"%016x" % next(_ID_COUNTER)
            if count or not isinstance(headers, list):
                headers = scope["headers"] = _with_id_header(list(headers), count, rid)
                ex.view = RequestView(headers)
            else:  # this request's own list, the view's (servers make one per request)
                headers.append((REQUEST_ID, rid))
        ex.rid = rid
        request_id.set(rid)  # for the application's log lines

    def leave(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Ours is the one request id on the response (an echo may be a cached one)."""
        rid = ex.rid
        for k, _ in headers:
            if k == REQUEST_ID:
                headers[:] = [(k, v) for k, v in headers if k != REQUEST_ID]
                break
        headers.append((REQUEST_ID, rid))

    def done(self, ex: Exchange) -> None:
        request_id.set(None)


def outcome(cache_status: bytes) -> str:
    """The metrics' cache outcome of a Cache-Status value: ``hit``,
    ``fwd=miss``...; ``none`` for answers that carry none (own endpoints,
    refusals before the cache)."""
    if not cache_status:
        return "none"
    return cache_status.decode("latin-1").removeprefix("cacheproxy; ").partition(";")[0]


_OUTCOMES: dict[bytes, str] = {}
"""Cache-Status value -> outcome, memoised: a few hundred distinct values
(``hit; ttl=N``), parsed once each instead of on every request."""
_MAX_OUTCOMES = 4096


class AccessLog(BaseStep):
    """The client-facing metrics and the access log: placed first, so it
    times the whole request and sees the response as it leaves."""

    def __init__(self, stats: Stats, enabled: bool) -> None:
        self.stats = stats
        self.enabled = enabled
        """Write the access log's lines (a reload may switch it)."""

    def enter(self, ex: Exchange) -> None:
        ex.started = time.perf_counter()

    def leave(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if ex.outcome is not None and not self.enabled:
            return  # (a hit: the metrics know the outcome, no line needs the header)
        for k, v in headers:  # (inlined: this runs for every request)
            if k == b"cache-status":
                ex.cache = v
                return

    def done(self, ex: Exchange) -> None:
        seconds = time.perf_counter() - ex.started
        found = ex.outcome
        if found is None:
            cache = ex.cache
            found = _OUTCOMES.get(cache)
            if found is None:
                if len(_OUTCOMES) >= _MAX_OUTCOMES:
                    _OUTCOMES.clear()
                found = _OUTCOMES[cache] = outcome(cache)
        self.stats.observe_response(ex.rule, ex.status, found, seconds)
        if self.enabled:
            self.write(ex, seconds)

    def write(self, ex: Exchange, seconds: float) -> None:
        scope = ex.scope
        client = scope.get("client")
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
        line: dict[str, Any] = {
            "ts": timestamp(),
            "request_id": ex.rid.decode(),
            "client": client[0] if client else "",
            "method": scope["method"],
            "path": redact(raw_path.decode("latin-1"))[:_MAX_FIELD],
            "query": redact_query(scope.get("query_string", b"")),
            "status": ex.status,
            "bytes": ex.sent,
            "duration_ms": round(seconds * 1000, 3),
            "cache": ex.cache.decode("latin-1").removeprefix("cacheproxy; "),
            "rule": ex.rule,
            "user": _user(scope),
        }
        access_log.info(orjson.dumps(line).decode())
