"""What a response says about the cache: hit, miss, collapsed or passed.

cacheproxy sends RFC 9211 ``Cache-Status``, e.g. ``cacheproxy; hit; ttl=3``,
``cacheproxy; fwd=miss; stored``, ``cacheproxy; fwd=miss; collapsed`` (it
joined another request's upstream fetch) or ``cacheproxy; fwd=method`` (a
write).  The nginx comparison sends ``X-Cache-Status: $upstream_cache_status``
(HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS).  A direct run has
neither.
"""

from __future__ import annotations

HIT = "hit"
MISS = "miss"
"""Forwarded because the cache had no usable entry (it may now be stored)."""
COLLAPSED = "collapsed"
"""A miss that joined another request's upstream fetch: no upstream request."""
PASS = "pass"
"""Forwarded without looking in the cache (writes, uncacheable paths)."""
NONE = ""
"""No cache header at all (a direct run, or an error before the proxy)."""

_NGINX_HIT = frozenset({"HIT", "STALE", "UPDATING", "REVALIDATED"})
_NGINX_MISS = frozenset({"MISS", "EXPIRED"})


def classify(cache_status: str | None, x_cache_status: str | None = None) -> str:
    """One of HIT, MISS, COLLAPSED, PASS, NONE."""
    if cache_status:
        # Only the first cache's entry (ours): "cacheproxy; hit, other; fwd=..."
        first = cache_status.split(",", 1)[0]
        params = [p.strip().lower() for p in first.split(";")[1:]]
        if "hit" in params:
            return HIT
        fwd = next((p[4:] for p in params if p.startswith("fwd=")), "")
        if fwd in ("miss", "stale"):
            return COLLAPSED if "collapsed" in params else MISS
        if fwd:
            return PASS
    if x_cache_status:
        value = x_cache_status.strip().upper()
        if value in _NGINX_HIT:
            return HIT
        if value in _NGINX_MISS:
            return MISS
        return PASS
    return NONE
