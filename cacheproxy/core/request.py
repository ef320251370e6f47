"""Turning an ASGI scope into the canonical request the cache reasons about.

One canonical request (issue 14): what is forwarded upstream and every cache
decision derive from the same parse.  Its header half is
:class:`cacheproxy.core.headers.RequestView`; its target half is here.

slurmrestd splits the path on ``/``, skips empty segments and percent-decodes
each segment, so ``/slurm/v0.0.43//jobs/`` and ``/slurm/v0.0.43/jobs`` are one
resource.  The canonical form is the tuple of decoded segments (never a joined
string: a decoded segment may itself contain ``/``).

The query is canonicalised as slurmrestd's ``serializer/url-encoded`` plugin
parses it (src/plugins/serializer/url-encoded/serializer_url_encoded.c, read
in 22.05.8, 23.11.0, 24.05.0 and 25.11.0; escapes per ``url_decode_escape_seq``
in src/common/http.c): only RFC 3986 unreserved characters pass as they are,
``%XX`` is decoded (``%00`` and ``%FF`` are errors), ``+`` is a space, ``;``
separates like ``&``, ``key`` alone is a flag (null in 22.05, true from 23.11),
``key=`` is null, ``=`` before a key or a second ``=`` after a value is an
error and anything else is an error (slurmrestd answers 400).  A repeated key's
last value wins in 22.05 and 23.11; from 24.05 the values become a list.  The
canonical form keeps every value of a key in order, so requests that either
rule tells apart never share a key (order between different keys changes
nothing in either).  A query it cannot parse with certainty is not
canonicalised (:func:`canonical_query` gives None): such a request is
forwarded, never cached.  The path is held to the same character rule
(``parse_url_path`` in src/common/http.c): a path slurmrestd would refuse
(``,``, ``+``, ``;`` ...) is never cached either, so two spellings it tells
apart cannot share a key.

The target's length is held to ``max_url_bytes`` (the setting) by
:func:`parse_target`, the one check the core makes, refused as the listener
refuses it (414): what the listener let through, the core never refuses for
its length (the listener, :mod:`cacheproxy.http.httplimits`, is the first to
apply that same setting; the core's check holds under any ASGI server).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from cacheproxy.core.headers import RequestView
from cacheproxy.upstream.base import Headers

LEGACY_VERSIONS = frozenset({"v0.0.36", "v0.0.37", "v0.0.38"})
"""22.05's API versions (its own plugins, not data_parser): they need the
user name beside a token, ignore ``Authorization``, answer "no change" with a
bare 304 and carry no ``meta.client``."""

Query = tuple[tuple[bytes, tuple[bytes, ...]], ...]
"""A canonical query: (decoded key, its values in order), sorted by key.  A
value is ``b""`` for a flag (``?key``), ``b"="`` for ``?key=`` and ``b"="``
plus the decoded value otherwise (decoded bytes never hold a NUL)."""

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class BadRequest(ValueError):
    """The request cannot be understood; answered with a 400, never a 500."""


class TargetTooLong(BadRequest):
    """The target is longer than ``max_url_bytes``: answered 414, as the
    listener answers it."""


@dataclass(slots=True)
class ProxyRequest:
    method: str
    raw_target: str
    """Path and query exactly as received: what is forwarded upstream."""
    segments: tuple[str, ...]
    query: Query | None
    """The canonical query; None when it cannot be canonicalised (never cached)."""
    headers: Headers
    client: str
    scheme: str
    view: RequestView = field(compare=False, repr=False)
    """The headers as forwarded and as the cache reads them (one scan of
    :attr:`headers`, so not compared on its own)."""

    def header(self, name: bytes) -> bytes | None:
        """The value of a single-valued header; None if absent or repeated."""
        found: bytes | None = None
        for k, v in self.headers:
            if k == name:
                if found is not None:
                    return None
                found = v
        return found

    def has_query(self, name: str) -> bool:
        """The canonical query has key ``name`` (True when the query could not
        be canonicalised: then nothing about it is certain)."""
        if self.query is None:
            return True
        key = name.encode()
        return any(k == key for k, _ in self.query)


def _decode(part: bytes, what: str) -> str:
    # Most parts hold no escape at all: skip the escape check and unquoting
    # (this runs for every segment of every request that is not memoised).
    raw = part
    if b"%" in part:
        if _BAD_PERCENT.search(part):
            raise BadRequest(f"malformed percent-encoding in the {what}")
        raw = unquote_to_bytes(part)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"the {what} is not valid UTF-8") from None
    if what == "path" and _CONTROL.search(text):
        raise BadRequest(f"control character in the {what}")
    return text


def split_path(raw_path: bytes) -> tuple[str, ...]:
    """Canonical segments of a raw (still percent-encoded) path."""
    segments = []
    for part in raw_path.split(b"/"):
        if not part:
            continue
        seg = _decode(part, "path")
        if seg in (".", ".."):
            raise BadRequest("dot segments are not allowed in the path")
        segments.append(seg)
    return tuple(segments)


_UNRESERVED = frozenset(b"0123456789abcdefABCDEFghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ~-._")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_PATH_OK = re.compile(rb"(?:[0-9A-Za-z~._/-]|%[0-9A-Fa-f]{2})*")
_PATH_BAD_ESCAPE = re.compile(rb"%(?:00|[Ff][Ff])")


def path_canonical(raw_path: bytes) -> bool:
    """slurmrestd's path parser accepts ``raw_path`` as it is (no character
    it refuses, no ``%00``/``%FF``): only then may the path's canonical
    segments stand for it in a key."""
    return _PATH_OK.fullmatch(raw_path) is not None and not _PATH_BAD_ESCAPE.search(raw_path)


def canonical_query(raw_query: bytes) -> Query | None:
    """The query as slurmrestd parses it (see the module docstring), or None
    when slurmrestd would refuse it or it cannot be canonicalised."""
    if not raw_query:
        return ()
    values: dict[bytes, list[bytes]] = {}
    key: bytes | None = None
    buf: bytearray | None = None
    i = 0
    n = len(raw_query)
    while i < n:
        c = raw_query[i]
        if c in _UNRESERVED:
            if buf is None:
                buf = bytearray()
            buf.append(c)
        elif c == 0x25:  # %
            if i + 2 >= n:
                return None
            h, lo = raw_query[i + 1], raw_query[i + 2]
            if h not in _HEX or lo not in _HEX:
                return None
            byte = int(raw_query[i + 1 : i + 3], 16)
            if byte == 0 or byte == 0xFF:
                return None
            if buf is None:
                buf = bytearray()
            buf.append(byte)
            i += 2
        elif c == 0x2B:  # +
            if buf is None:
                buf = bytearray()
            buf.append(0x20)
        elif c == 0x26 or c == 0x3B:  # & ;
            _flush(values, key, buf)
            key = buf = None
        elif c == 0x3D:  # =
            if key is None and buf is None:
                return None
            if key is None:
                key, buf = bytes(buf or b""), None
            elif buf is not None:
                return None
            # key set and no value yet: a repeated "=" is ignored
        else:
            return None
        i += 1
    _flush(values, key, buf)
    return tuple(sorted((k, tuple(v)) for k, v in values.items()))


def _flush(values: dict[bytes, list[bytes]], key: bytes | None, buf: bytearray | None) -> None:
    if key is None:
        if buf is not None:  # ?flag
            values.setdefault(bytes(buf), []).append(b"")
    elif buf is None:  # ?key=
        values.setdefault(key, []).append(b"=")
    else:
        values.setdefault(key, []).append(b"=" + bytes(buf))


def parse_target(
    raw_path: bytes, raw_query: bytes, max_url_bytes: int
) -> tuple[tuple[str, ...], Query | None]:
    """A target's canonical (segments, query); raises :class:`TargetTooLong`
    above ``max_url_bytes``, :class:`BadRequest` when it does not parse.

    The length counted is the target's as received (``?`` only with a
    query), so the core never refuses what the listener accepted."""
    length = len(raw_path) + (len(raw_query) + 1 if raw_query else 0)
    if length > max_url_bytes:
        raise TargetTooLong("the URL is too long")
    if not raw_path.startswith(b"/"):
        raise BadRequest("the request target must be an absolute path")
    return split_path(raw_path), canonical_query(raw_query)


def target_of(scope: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The raw (still percent-encoded) path and query of an ASGI scope."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    return raw_path, scope.get("query_string", b"")


def from_scope(
    scope: Mapping[str, Any],
    parsed: tuple[tuple[str, ...], Query | None],
    view: RequestView | None = None,
) -> ProxyRequest:
    """The canonical request of an ASGI HTTP scope.

    ``parsed`` is this very target's (segments, query), from
    :func:`parse_target` (the proxy memoises them per target); ``view``, the
    headers' scan, when the caller made it already.
    """
    raw_path, raw_query = target_of(scope)
    segments, query = parsed
    headers: Headers = list(scope["headers"]) if view is None else view.headers
    return ProxyRequest(
        method=scope["method"],
        raw_target=raw_target(raw_path, raw_query),
        segments=segments,
        query=query,
        headers=headers,
        client=client_host(scope),
        scheme=scope.get("scheme", "http"),
        view=RequestView(headers) if view is None else view,
    )


def raw_target(raw_path: bytes, raw_query: bytes) -> str:
    """The request target as received, as forwarded upstream."""
    target = raw_path.decode("latin-1")
    if raw_query:
        target += "?" + raw_query.decode("latin-1")
    return target


def client_host(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return client[0] if client else ""
