"""HTTP clients to slurmrestd behind the one-method :class:`Transport` seam."""

from cacheproxy.upstream.base import (
    BufferedResponse,
    Headers,
    Transport,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
)
from cacheproxy.upstream.factory import TRANSPORT_KINDS, create_transport

__all__ = [
    "TRANSPORT_KINDS",
    "BufferedResponse",
    "Headers",
    "Transport",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRefused",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTimeout",
    "create_transport",
]
