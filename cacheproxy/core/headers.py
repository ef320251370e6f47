"""Header handling: hop-by-hop stripping, forwarding headers, Cache-Status.

A proxy must drop hop-by-hop headers (RFC 9110 §7.6.1) in both directions and
pass every end-to-end header through untouched.

:class:`RequestView` is the one place that decides which request headers
reach slurmrestd; the cache's identity, credential and ``Accept`` are read
from that same view (see docs/hardening.md, "One canonical request").
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


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})

USER_NAME = b"x-slurm-user-name"
USER_TOKEN = b"x-slurm-user-token"
AUTHORIZATION = b"authorization"
REQUEST_ID = b"x-request-id"
_VIEWED = frozenset(
    {
        USER_NAME,
        USER_TOKEN,
        AUTHORIZATION,
        b"accept",
        b"accept-encoding",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        REQUEST_ID,
    }
)
"""The headers :class:`RequestView` reads (others pass its scan with one check)."""


def _tokens(value: bytes, into: set[bytes] | None) -> set[bytes]:
    """The header names listed in one ``Connection`` value (RFC 9110 §7.6.1)."""
    tokens = into if into is not None else set()
    lowered = value.lower()
    if lowered == b"keep-alive" or lowered == b"close":  # the usual values
        tokens.add(lowered)
    else:
        tokens.update(t.strip() for t in lowered.split(b",") if t.strip())
    return tokens


class RequestView:
    """A request's headers as they are forwarded upstream, and everything the
    cache decides from them, from one scan.

    This is the canonical request's header half (issue 14): hop-by-hop
    headers and every header named in ``Connection`` are removed first
    (:func:`upstream_request_headers` forwards exactly :attr:`dropped`'s
    complement), and the credential and ``Accept`` are read from what is
    left.  So no header counts for the identity, the credential hash or the
    key unless slurmrestd receives it, and the reverse.  A client that names
    ``X-SLURM-USER-NAME`` in ``Connection`` is forwarded (and judged) as a
    request without a name: the decision is made on the forwarded request.

    Read as slurmrestd reads them (``find_http_header`` in
    src/slurmrestd/http.c of 22.05, src/common/http.c of 23.11 to 25.11: the
    first header of a name counts, names compared without case; ``Accept`` is
    kept by the parser, the last one wins): :attr:`name`, :attr:`token` and
    :attr:`auth` are the first occurrence (None when absent; an empty value
    is present), :attr:`repeated` says one of them came more than once (the
    cache then stays out of it), :attr:`accept` is the last ``Accept``.
    Header names are lower case (the ASGI specification; uvicorn lowers them).
    """

    __slots__ = (
        "accept",
        "accept_encoding",
        "auth",
        "connection",
        "has_body",
        "headers",
        "name",
        "repeated",
        "request_id",
        "request_ids",
        "token",
    )

    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        name = token = auth = accept = None
        accept_encoding = b""
        repeated = has_body = False
        tokens: set[bytes] | None = None
        request_id: bytes | None = None
        request_ids = 0
        for k, v in headers:
            if k not in _VIEWED:
                continue
            if k == USER_NAME:
                if name is None:
                    name = v
                else:
                    repeated = True
            elif k == USER_TOKEN:
                if token is None:
                    token = v
                else:
                    repeated = True
            elif k == AUTHORIZATION:
                if auth is None:
                    auth = v
                else:
                    repeated = True
            elif k == b"accept":
                accept = v
            elif k == b"accept-encoding":
                accept_encoding = v
            elif k == b"content-length":
                has_body |= v != b"0"
            elif k == b"transfer-encoding":
                has_body = True
            elif k == b"connection":
                tokens = _tokens(v, tokens)
            else:  # REQUEST_ID
                request_id = v
                request_ids += 1
        connection = None
        if tokens and not tokens <= _PLAIN_CONNECTION:
            # Rare: names listed in Connection are not forwarded, so they
            # count for nothing.  Read the end-to-end headers again.
            connection = frozenset(tokens)
            name = token = auth = accept = None
            repeated = False
            for k, v in headers:
                if k in connection:
                    continue
                if k == USER_NAME:
                    repeated |= name is not None
                    name = v if name is None else name
                elif k == USER_TOKEN:
                    repeated |= token is not None
                    token = v if token is None else token
                elif k == AUTHORIZATION:
                    repeated |= auth is not None
                    auth = v if auth is None else auth
                elif k == b"accept":
                    accept = v
        elif tokens:
            connection = frozenset(tokens)
        self.connection = connection
        """Names listed in ``Connection`` (None when there is none)."""
        self.name: bytes | None = name
        self.token: bytes | None = token
        self.auth: bytes | None = auth
        self.repeated = repeated
        self.accept: bytes | None = accept
        self.accept_encoding = accept_encoding
        self.has_body = has_body
        """The request announced a body (Content-Length not 0, or chunked)."""
        self.request_id = request_id
        self.request_ids = request_ids
        """``X-Request-ID`` as received (the last one) and how many came: for
        the request-id step (:mod:`cacheproxy.http.accesslog`), so the
        headers are scanned once per request."""

    def forwarded(self) -> Headers:
        """The end-to-end headers forwarded as is, in order (what
        :func:`upstream_request_headers` sends besides the ones it makes)."""
        return _split(self)[0]


_NO_NAMES: frozenset[bytes] = frozenset()


def _split(view: RequestView) -> tuple[Headers, bytes | None, bytes | None]:
    """One pass: the headers forwarded as is, the ``Host`` and the joined
    ``X-Forwarded-For`` received (the forwarding headers are made anew)."""
    out: Headers = []
    connection = view.connection or _NO_NAMES
    forwarded_for: bytes | None = None
    host: bytes | None = None
    for item in view.headers:
        k = item[0]
        if k in _REQUEST_SKIP:
            if k == b"host":
                host = item[1]
            elif k == b"x-forwarded-for":
                v = item[1]
                forwarded_for = v if forwarded_for is None else forwarded_for + b", " + v
            continue
        if k not in connection:
            out.append(item)
    return out, host, forwarded_for


def upstream_request_headers(
    view: RequestView | Headers,
    *,
    upstream_host: bytes,
    client: str,
    scheme: str,
    body_length: int | None,
) -> Headers:
    """Headers to send upstream: end-to-end ones in order, plus forwarding.

    ``view`` is the request's :class:`RequestView` (a bare header list is
    scanned into one): the very view the cache decided on.
    """
    if not isinstance(view, RequestView):
        view = RequestView(view)
    kept, host, forwarded_for = _split(view)
    out: Headers = [(b"host", upstream_host), *kept]
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
