"""Serving an expired entry in upstream's place (docs/hardening.md).

Which entry may stand in, and for how long, is policy
(:func:`cacheproxy.core.policy.stale_fallback`); here: telling that upstream
failed, and sending the entry marked stale.
"""

from __future__ import annotations

from cacheproxy.core import headers, policy
from cacheproxy.core.rules import Match
from cacheproxy.http.answer import BUFFER_BODY_BELOW, send_entry
from cacheproxy.http.coalesce import Flight
from cacheproxy.http.respond import Message, Send
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry
from cacheproxy.upstream.base import UpstreamError


async def flight_failed(flight: Flight) -> bool:
    """Did upstream fail this fetch (a 502/503/504, slurmctld's 500 "please
    retry later", or a small body that broke)?  Only asked when a stale entry
    could stand in."""
    if flight.status in policy.STALE_ON_STATUS:
        return True
    if flight.status == 500:
        await flight.wait_done()
        return flight.dropped
    length = policy.content_length(flight.headers)
    if flight.done or (length is not None and length < BUFFER_BODY_BELOW):
        await flight.wait_done()
        return isinstance(flight.error, UpstreamError)
    return False


async def send_stale(
    send: Send,
    entry: Entry,
    match: Match,
    reason: str,
    accept_encoding: bytes,
    now: float,
    stats: Stats,
    source: bytes | None = None,
) -> None:
    """Send ``entry`` marked stale in Cache-Status (RFC 9211), with Age
    (and, from a shared entry, the requester's ``meta.client.source``)."""
    age = now - entry.stored_at
    stats.observe_stale(match.name, age)
    stats.requests[(match.name, "stale")] += 1
    over = max(0, int(now - entry.stored_at - entry.ttl))
    prefix = "hit; fwd=stale" if reason == "stale-while-revalidate" else "fwd=stale"
    marked = headers.cache_status(f"{prefix}; detail={reason}; ttl=-{over}")

    async def mark(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                marked if k == headers.CACHE_STATUS else (k, v) for k, v in message["headers"]
            ]
        await send(message)

    await send_entry(mark, entry, now, accept_encoding, source)
