"""Turning an ASGI scope into the canonical request the cache reasons about.

slurmrestd splits the path on ``/``, skips empty segments and percent-decodes
each segment, so ``/slurm/v0.0.43//jobs/`` and ``/slurm/v0.0.43/jobs`` are one
resource.  The canonical form is the tuple of decoded segments (never a joined
string: a decoded segment may itself contain ``/``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from cacheproxy.upstream.base import Headers

MAX_URL_BYTES = 8192

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class BadRequest(ValueError):
    """The request cannot be understood; answered with a 400, never a 500."""


@dataclass(slots=True)
class ProxyRequest:
    method: str
    raw_target: str
    """Path and query exactly as received: what is forwarded upstream."""
    segments: tuple[str, ...]
    query: tuple[tuple[str, str], ...]
    """Decoded query pairs, sorted (order does not change slurmrestd's answer)."""
    headers: Headers
    client: str
    scheme: str

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
        return any(k == name for k, _ in self.query)


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


def parse_query(raw_query: bytes) -> tuple[tuple[str, str], ...]:
    if not raw_query:
        return ()
    pairs = []
    for item in raw_query.split(b"&"):
        if not item:
            continue
        name, _, value = item.partition(b"=")
        pairs.append(
            (
                _decode(name.replace(b"+", b" "), "query"),
                _decode(value.replace(b"+", b" "), "query"),
            )
        )
    pairs.sort()
    return tuple(pairs)


def from_scope(
    scope: Mapping[str, Any],
    parsed: tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None = None,
) -> ProxyRequest:
    """Parse an ASGI HTTP scope; raises :class:`BadRequest` on bad input.

    ``parsed`` is this very target's (segments, query), already parsed and
    checked by the caller (the proxy memoises them per target): given, the
    target is not parsed again.
    """
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    raw_query: bytes = scope.get("query_string", b"")
    if parsed is None:
        if len(raw_path) + len(raw_query) + 1 > MAX_URL_BYTES:
            raise BadRequest("the URL is too long")
        if not raw_path.startswith(b"/"):
            raise BadRequest("the request target must be an absolute path")
        segments = split_path(raw_path)
        query = parse_query(raw_query)
    else:
        segments, query = parsed
    return ProxyRequest(
        method=scope["method"],
        raw_target=raw_target(raw_path, raw_query),
        segments=segments,
        query=query,
        headers=list(scope["headers"]),
        client=client_host(scope),
        scheme=scope.get("scheme", "http"),
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
