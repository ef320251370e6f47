"""The proxy's own error responses, in slurmrestd's JSON error shape.

Clients written for slurmrestd parse ``errors[].error``/``error_number``/
``description``; answering in that shape (with ``source: "cacheproxy"``) lets
them show a useful message instead of a decoding failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from cacheproxy import __version__
from cacheproxy.upstream.base import Headers


@dataclass(frozen=True, slots=True)
class ProxyError:
    status: int
    error: str
    description: str
    error_number: int = -1


BAD_REQUEST = 400
PAYLOAD_TOO_LARGE = 413
URI_TOO_LONG = 414
METHOD_NOT_ALLOWED = 405
BAD_GATEWAY = 502
SERVICE_UNAVAILABLE = 503
GATEWAY_TIMEOUT = 504
TOO_MANY_REQUESTS = 429
HEADERS_TOO_LARGE = 431
REQUEST_TIMEOUT = 408

_META = {
    "plugin": {
        "type": "cacheproxy",
        "name": "cacheproxy",
        "data_parser": "",
        "accounting_storage": "",
    },
    "client": {"source": "", "user": "", "group": ""},
    "command": [],
    "slurm": {"version": {"major": "", "micro": "", "minor": ""}, "release": "", "cluster": ""},
    "cacheproxy": {"version": __version__},
}


def error_body(err: ProxyError) -> bytes:
    """Serialise ``err`` like slurmrestd does (2-space indented JSON)."""
    doc = {
        "errors": [
            {
                "description": err.description,
                "error_number": err.error_number,
                "error": err.error,
                "source": "cacheproxy",
            }
        ],
        "warnings": [],
        "meta": _META,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def error_response(err: ProxyError, extra: Headers | None = None) -> tuple[int, Headers, bytes]:
    body = error_body(err)
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra:
        headers.extend(extra)
    return err.status, headers, body


def bad_request(description: str) -> ProxyError:
    return ProxyError(BAD_REQUEST, "Malformed request", description)


UPSTREAM_UNREACHABLE = ProxyError(
    BAD_GATEWAY, "Unable to contact slurmrestd", "cacheproxy could not connect to slurmrestd"
)
UPSTREAM_BROKEN = ProxyError(
    BAD_GATEWAY, "Invalid response from slurmrestd", "slurmrestd closed or broke the connection"
)
UPSTREAM_TIMEOUT = ProxyError(
    GATEWAY_TIMEOUT, "slurmrestd timed out", "slurmrestd did not answer in time"
)
BODY_TOO_LARGE = ProxyError(
    PAYLOAD_TOO_LARGE, "Request body too large", "the request body exceeds the proxy's limit"
)
UPSTREAM_BUSY = ProxyError(
    SERVICE_UNAVAILABLE,
    "slurmrestd busy",
    "too many requests are in flight to slurmrestd; retry later",
)
UPSTREAM_CIRCUIT_OPEN = ProxyError(
    SERVICE_UNAVAILABLE,
    "slurmrestd unavailable",
    "slurmrestd failed repeatedly; cacheproxy holds requests back for a while",
)
TOO_MANY_CONNECTIONS = ProxyError(
    SERVICE_UNAVAILABLE,
    "cacheproxy busy",
    "too many open connections to cacheproxy; retry later",
)
# Deliberately terse: says neither which limit was hit nor whether the user exists.
AUTH_BLOCKED = ProxyError(TOO_MANY_REQUESTS, "Too many requests", "Authentication failure")
RATE_LIMITED = ProxyError(TOO_MANY_REQUESTS, "Too many requests", "request rate limit exceeded")
URL_TOO_LONG = ProxyError(
    URI_TOO_LONG, "URI too long", "the request target exceeds the proxy's limit"
)
HEAD_TOO_LARGE = ProxyError(
    HEADERS_TOO_LARGE,
    "Request header fields too large",
    "the request head exceeds the proxy's limit",
)
HEAD_TIMEOUT = ProxyError(
    REQUEST_TIMEOUT, "Request timeout", "the request head did not arrive in time"
)
INTERNAL = ProxyError(
    SERVICE_UNAVAILABLE, "cacheproxy internal error", "cacheproxy failed handling the request"
)
