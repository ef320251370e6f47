"""Build the transport to slurmrestd.

Kept apart from the transport so that importing the package does not import
aiohttp, and so the accepted spellings of the old ``upstream_client`` setting
are decided in one place.
"""

from __future__ import annotations

import logging

from cacheproxy.upstream.base import Transport

_log = logging.getLogger("cacheproxy.upstream")

TRANSPORT_KINDS: tuple[str, ...] = ("auto", "aiohttp", "h1")
"""Accepted values of ``kind``.  There is one transport (aiohttp); ``h1``
named the hand-written client removed in issue 16 and is accepted, with a
deprecation warning, so that existing configurations keep starting."""


def create_transport(
    url: str,
    *,
    max_connections: int = 64,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    kind: str = "auto",
    ca_file: str = "",
) -> Transport:
    """A pooled transport to ``http://host:port``, ``https://host:port`` or ``unix:/path``.

    ``max_connections`` bounds the pool (requests beyond it wait for a free
    connection, at most ``connect_timeout``); ``read_timeout`` bounds each wait
    for data from slurmrestd, not the whole response.
    """
    if kind not in TRANSPORT_KINDS:
        raise ValueError(f"unknown transport kind {kind!r}; expected one of {TRANSPORT_KINDS}")
    if kind == "h1":
        _log.warning(
            "upstream_client 'h1' is deprecated: the hand-written HTTP/1.1 client was "
            "removed and aiohttp is used; set upstream_client to 'auto' or drop it"
        )
    from cacheproxy.upstream.aiohttp_transport import create_aiohttp_transport

    return create_aiohttp_transport(
        url,
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        ca_file=ca_file,
    )
