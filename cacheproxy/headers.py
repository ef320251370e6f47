"""Header handling: hop-by-hop stripping, forwarding headers, Cache-Status.

A proxy must drop hop-by-hop headers (RFC 9110 §7.6.1) in both directions and
pass every end-to-end header through untouched.
"""

from __future__ import annotations

from cacheproxy.upstream.base import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Not forwarded upstream: the proxy frames the body itself, sets Host for the
# upstream, and wants identity-encoded bytes from slurmrestd (it compresses
# for clients itself).
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"expect", b"accept-encoding", b"content-length"}

CACHE_STATUS = b"cache-status"
AGE = b"age"


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            tokens.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return tokens


def upstream_request_headers(
    headers: Headers,
    *,
    upstream_host: bytes,
    client: str,
    scheme: str,
    body_length: int | None,
) -> Headers:
    """Headers to send upstream: end-to-end ones in order, plus forwarding."""
    drop = _REQUEST_DROP | _connection_tokens(headers)
    out: Headers = [(b"host", upstream_host)]
    forwarded_for: bytes | None = None
    host: bytes | None = None
    for k, v in headers:
        if k == b"host":
            host = v
        if k in drop or k in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
            if k == b"x-forwarded-for":
                forwarded_for = v if forwarded_for is None else forwarded_for + b", " + v
            continue
        out.append((k, v))
    if body_length is not None:
        out.append((b"content-length", str(body_length).encode()))
    xff = client.encode()
    if forwarded_for:
        xff = forwarded_for + b", " + xff
    if xff:
        out.append((b"x-forwarded-for", xff))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host is not None:
        out.append((b"x-forwarded-host", host))
    return out


def response_headers(headers: Headers) -> Headers:
    """Upstream response headers minus hop-by-hop ones (wire order kept)."""
    drop = HOP_BY_HOP | _connection_tokens(headers)
    return [(k, v) for k, v in headers if k not in drop]


def cache_status(value: str) -> tuple[bytes, bytes]:
    return (CACHE_STATUS, b"cacheproxy; " + value.encode())
