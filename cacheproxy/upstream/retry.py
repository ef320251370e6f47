"""The one retry a transport may make on its own.

A keep-alive connection can die while idle in the pool (slurmrestd restarted,
or closed it) and the client only learns so when it writes the next request
on it.  Re-sending is harmless for a read, but a slurmrestd write applied
twice submits two jobs, so every transport applies the same rule.
"""

from __future__ import annotations

from cacheproxy.upstream.base import UpstreamRequest

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def may_retry(request: UpstreamRequest) -> bool:
    """Whether ``request`` may be sent a second time after a pooled connection
    turned out dead before any response byte: the caller must allow it, and
    even then never a write, nor a streamed body we could not replay."""
    return (
        request.retry_on_stale_connection
        and request.method in SAFE_METHODS
        and isinstance(request.body, bytes)
    )
