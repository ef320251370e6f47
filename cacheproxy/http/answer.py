"""Writing the proxy's responses: a cached entry, a shared flight, an error.

Every one carries ``Cache-Status`` (RFC 9211) saying how it was answered.
(The middlewares' own refusals are in :mod:`cacheproxy.http.respond`.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from cacheproxy.core import compress, errors, headers, policy, splice
from cacheproxy.core.rules import Match
from cacheproxy.http.coalesce import Flight
from cacheproxy.http.respond import Response, Send, send_error
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry
from cacheproxy.upstream.base import (
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger("cacheproxy.proxy")
"""The proxy's log, as before these modules were split out of it."""

BUFFER_BODY_BELOW = 1024 * 1024
"""Responses smaller than this are sent in one piece once complete (accurate
Cache-Status, one write); larger ones stream as they arrive."""


class AbortResponse(Exception):
    """The upstream body broke after the head was sent: drop the connection
    so the client sees a truncated response, never a complete-looking one."""


def hit_response(
    entry: Entry, now: float, accept_encoding: bytes, source: bytes | None = None
) -> Response:
    """A cached entry as the response to one client: the variant its
    ``Accept-Encoding`` takes, plus ``Cache-Status`` and ``Age``.  The body
    is the stored object itself, never a copy, except for a shared entry
    given the requester's ``meta.client.source`` (``source``, a JSON string):
    then the stored body with it spliced in."""
    ttl = int(entry.stored_at + entry.ttl - now)
    age = int(now - entry.stored_at)
    status = _HIT_STATUS[ttl] if 0 <= ttl < _MADE else _hit_status(max(0, ttl))
    aged = _AGE[age] if 0 <= age < _MADE else (headers.AGE, b"%d" % max(0, age))
    body = entry.body
    if entry.splice is not None and source is not None:
        out = [(k, v) for k, v in entry.headers if k != b"content-length"]
        parts = _spliced_gzip_parts(entry, accept_encoding)
        if parts is None:
            body = splice.spliced(body, entry.splice, source)
        else:
            body = splice.spliced_gzip(body, entry.splice, parts, source)
            out += [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
        out += [(b"content-length", b"%d" % len(body)), status, aged]
        return entry.status, out, body
    variant = (
        compress.choose(accept_encoding, entry.variants)
        if accept_encoding and entry.variants  # (no call for a client that takes none)
        else None
    )
    if variant is None:
        return entry.status, [*entry.headers, status, aged], body
    encoding, body = variant
    out = [(k, v) for k, v in entry.headers if k != b"content-length"]
    out += [
        (b"content-length", b"%d" % len(body)),
        (b"content-encoding", encoding),
        (b"vary", b"accept-encoding"),
        status,
        aged,
    ]
    return entry.status, out, body


def _spliced_gzip_parts(entry: Entry, accept_encoding: bytes) -> bytes | None:
    """A shared entry's gzip parts, when the client takes gzip."""
    if not accept_encoding or b"gzip" not in compress.accepted(accept_encoding):
        return None
    for name, data in entry.variants:
        if name == splice.SPLICED_GZIP:
            return data
    return None


def _hit_status(ttl: int) -> tuple[bytes, bytes]:
    return (headers.CACHE_STATUS, b"cacheproxy; hit; ttl=%d" % ttl)


_MADE = 4096
"""Hits' ``Cache-Status`` and ``Age`` headers are made once for the seconds
below this (formatting them per hit was a tenth of the hit path's own work)."""
_HIT_STATUS = [_hit_status(ttl) for ttl in range(_MADE)]
_AGE = [(headers.AGE, b"%d" % age) for age in range(_MADE)]


async def send_entry(
    send: Send, entry: Entry, now: float, accept_encoding: bytes = b"", source: bytes | None = None
) -> None:
    status, out, body = hit_response(entry, now, accept_encoding, source)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_flight(
    send: Send,
    flight: Flight,
    match: Match,
    outcome: str,
    stats: Stats,
    source: bytes | None = None,
) -> None:
    """Relay a flight's answer; a follower of a shared flight (``source``:
    its own ``meta.client.source``) gets it spliced in (it awaited the whole
    body already, :func:`cacheproxy.http.coalesce.flight_refused`)."""
    length = policy.content_length(flight.headers)
    small = length is not None and length < BUFFER_BODY_BELOW
    if small or flight.done:
        await flight.wait_done()
        if flight.error is not None:
            stats.requests[(match.name, "error")] += 1
            if isinstance(flight.error, UpstreamError):
                await send_upstream_error(send, flight.error, outcome, stats)
                return
            raise flight.error
        if flight.from_peer:
            outcome = "hit; detail=peer"
        elif flight.revalidated:
            outcome = outcome.replace("fwd=miss", "fwd=stale", 1) + "; fwd-status=304"
            if flight.stored:
                outcome += "; stored"
        elif flight.stored:
            outcome += "; stored"
        body = flight.body()
        out = [*flight.headers]
        if source is not None and flight.splice is not None:
            body = splice.spliced(body, flight.splice, source)
            out = [(k, v) for k, v in out if k != b"content-length"]
            out.append((b"content-length", b"%d" % len(body)))
        stats.requests[(match.name, outcome.split(";", 1)[0])] += 1
        out.append(headers.cache_status(outcome))
        await send({"type": "http.response.start", "status": flight.status, "headers": out})
        await send({"type": "http.response.body", "body": body})
        return
    stats.requests[(match.name, outcome.split(";", 1)[0])] += 1
    out = [*flight.headers, headers.cache_status(outcome)]
    await send({"type": "http.response.start", "status": flight.status, "headers": out})
    try:
        await relay(send, flight.stream())
    except Exception as exc:
        stats.upstream_errors += 1
        raise AbortResponse(str(exc)) from exc


async def send_upstream_error(send: Send, exc: BaseException, outcome: str, stats: Stats) -> None:
    stats.upstream_errors += 1
    if isinstance(exc, UpstreamBusy | UpstreamUnavailable):
        # The proxy's own protection (upstream/protect.py): one line per
        # request would flood the log during an outage.
        log.debug("upstream refused locally: %s", exc)
        err = (
            errors.UPSTREAM_BUSY if isinstance(exc, UpstreamBusy) else errors.UPSTREAM_CIRCUIT_OPEN
        )
        retry = b"%d" % max(1, int(exc.retry_after + 0.999))
        await send_error(send, err, outcome, [(b"retry-after", retry)])
        return
    log.warning("upstream error: %s: %s", type(exc).__name__, exc)
    err = (
        errors.UPSTREAM_TIMEOUT
        if isinstance(exc, UpstreamTimeout)
        else (
            errors.UPSTREAM_UNREACHABLE
            if isinstance(exc, UpstreamError) and not exc.sent
            else errors.UPSTREAM_BROKEN
        )
    )
    await send_error(send, err, outcome)


async def relay(send: Send, chunks: AsyncIterator[bytes]) -> None:
    """Send a streamed body, holding one chunk back so the last goes out with
    ``more_body=False`` (no empty closing message: one send fewer)."""
    pending: bytes | None = None
    async for chunk in chunks:
        if pending is not None:
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        pending = chunk
    await send({"type": "http.response.body", "body": pending or b"", "more_body": False})
