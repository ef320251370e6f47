"""How the startup line and the status page name the proxy's parts."""

from __future__ import annotations

from urllib.parse import urlsplit


def tiers(redis_url: str, local_tier: bool) -> str:
    """The cache's tiers: ``memory``, ``memory+redis <url>`` or ``redis <url>``."""
    if not redis_url:
        return "memory"
    shared = "redis " + redact_url(redis_url)
    return f"memory+{shared}" if local_tier else shared


def redact_url(url: str) -> str:
    """A URL without its password (Redis URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return url.replace(parts.netloc, user + host, 1)
