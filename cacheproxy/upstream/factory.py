"""Choose and build the transport to slurmrestd.

Kept apart from the transports so that importing the package does not import
every HTTP client, and so the default is decided (and documented) in one place.
"""

from __future__ import annotations

from typing import Literal

from cacheproxy.upstream.base import Transport

TransportKind = Literal["auto", "h1", "aiohttp"]
TRANSPORT_KINDS: tuple[str, ...] = ("auto", "h1", "aiohttp")
"""Accepted values of ``kind``; ``auto`` is the fastest correct one."""


def create_transport(
    url: str,
    *,
    max_connections: int = 64,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    kind: str = "auto",
) -> Transport:
    """A pooled transport to ``http://host:port`` or ``unix:/path``.

    ``max_connections`` bounds the pool (requests beyond it wait for a free
    connection, at most ``connect_timeout``); ``read_timeout`` bounds each wait
    for data from slurmrestd, not the whole response.
    """
    if kind not in TRANSPORT_KINDS:
        raise ValueError(f"unknown transport kind {kind!r}; expected one of {TRANSPORT_KINDS}")
    if kind in ("auto", "h1"):
        from cacheproxy.upstream.h1_transport import create_h1_transport

        return create_h1_transport(
            url,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    from cacheproxy.upstream.aiohttp_transport import create_aiohttp_transport

    return create_aiohttp_transport(
        url,
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
