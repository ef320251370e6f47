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


_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_REQUEST_SKIP = _REQUEST_DROP | _FORWARDED
"""Every request header not copied as is: dropped, or rebuilt by the proxy."""
_SCHEMES = {"http": b"http", "https": b"https"}


def _tokens(value: bytes, into: set[bytes] | None) -> set[bytes]:
    """The header names listed in one ``Connection`` value (RFC 9110 §7.6.1)."""
    tokens = into if into is not None else set()
    lowered = value.lower()
    if lowered == b"keep-alive" or lowered == b"close":  # the usual values
        tokens.add(lowered)
    else:
        tokens.update(t.strip() for t in lowered.split(b",") if t.strip())
    return tokens


def upstream_request_headers(
    headers: Headers,
    *,
    upstream_host: bytes,
    client: str,
    scheme: str,
    body_length: int | None,
) -> Headers:
    """Headers to send upstream: end-to-end ones in order, plus forwarding.

    One pass over the headers (this runs on every forwarded request); the
    ``Connection`` header's tokens, rare in practice, filter afterwards.
    """
    out: Headers = [(b"host", upstream_host)]
    forwarded_for: bytes | None = None
    host: bytes | None = None
    tokens: set[bytes] | None = None
    for item in headers:
        k = item[0]
        if k in _REQUEST_SKIP:
            if k == b"host":
                host = item[1]
            elif k == b"x-forwarded-for":
                v = item[1]
                forwarded_for = v if forwarded_for is None else forwarded_for + b", " + v
            elif k == b"connection":
                tokens = _tokens(item[1], tokens)
            continue
        out.append(item)
    if tokens:
        out = [out[0], *(h for h in out[1:] if h[0] not in tokens)]
    if body_length is not None:
        out.append((b"content-length", b"%d" % body_length))
    xff = client.encode()
    if forwarded_for:
        xff = forwarded_for + b", " + xff
    if xff:
        out.append((b"x-forwarded-for", xff))
    out.append((b"x-forwarded-proto", _SCHEMES.get(scheme) or scheme.encode()))
    if host is not None:
        out.append((b"x-forwarded-host", host))
    return out


def response_headers(headers: Headers) -> Headers:
    """Upstream response headers minus hop-by-hop ones (wire order kept)."""
    out = [h for h in headers if h[0] not in HOP_BY_HOP]
    if len(out) != len(headers):  # something dropped: maybe a Connection header
        tokens: set[bytes] | None = None
        for k, v in headers:
            if k == b"connection":
                tokens = _tokens(v, tokens)
        if tokens and not tokens <= HOP_BY_HOP:
            out = [h for h in out if h[0] not in tokens]
    return out


def cache_status(value: str) -> tuple[bytes, bytes]:
    return (CACHE_STATUS, b"cacheproxy; " + value.encode())
