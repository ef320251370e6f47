"""``meta.client`` per requester: where a stored body names its client, and
the body as another requester gets it.

slurmrestd fills one part of ``meta.client`` per request, ``source`` (the
connection's name, ``query_meta.client.source = context_id`` in
src/slurmrestd/openapi.c, 23.02's v0.0.39 to 25.11's v0.0.44); ``user`` and
``group`` are the plugin's constants (root/root under ``/slurm``,
nobody under ``/slurmdb``: the examples in slurm-openapi/examples), the same for
every requester, so they are left as stored.  22.05's v0.0.38 has no
``meta.client``: nothing to splice.

The offsets are found once, when an entry is stored, without parsing the
whole body: the top-level ``meta`` is the last ``"meta"`` key of the body
(v0.0.40 and later put it after the payload), proved so by parsing only
``{`` plus the rest of the body from there, which is valid JSON only if that
key is a member of the outermost object (a nested or quoted one would leave
a brace unmatched).  The value is then found with a pattern anchored at that
key's ``"client"`` object and checked against the parsed value.  Whatever
cannot be proved this way (YAML, an unusual layout) is :data:`UNSURE`: such
an answer is not stored as a shared entry.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

UNSURE: Final = (-1, -1)
"""A body whose ``meta.client.source`` could not be located with certainty."""

_META = b'"meta"'
_STRING = rb'"(?:[^"\\]|\\.)*"'
_CLIENT_SOURCE = re.compile(
    rb'"client"\s*:\s*\{\s*(?:' + _STRING + rb"\s*:\s*" + _STRING + rb"\s*,\s*)*?"
    rb'"source"\s*:\s*(' + _STRING + rb")",
    re.DOTALL,
)


def _is_json(content_type: bytes | None) -> bool:
    ct = (content_type or b"").split(b";", 1)[0].strip().lower()
    return ct == b"application/json" or ct.endswith(b"+json")


def source_span(body: bytes, content_type: bytes | None) -> tuple[int, int] | None:
    """The byte range of ``meta.client.source``'s JSON string (quotes
    included); None when the body has no ``meta.client.source`` (nothing to
    splice); :data:`UNSURE` when it could not be located with certainty."""
    if not _is_json(content_type):
        return UNSURE
    at = body.rfind(_META)
    if at < 0:
        return UNSURE
    try:
        tail = orjson.loads(b"{" + body[at:])
    except orjson.JSONDecodeError:
        return UNSURE
    meta = tail.get("meta") if isinstance(tail, dict) else None
    if not isinstance(meta, dict):
        return UNSURE
    client = meta.get("client")
    if client is None:
        return None
    if not isinstance(client, dict):
        return UNSURE
    source = client.get("source")
    if source is None:
        return None
    m = _CLIENT_SOURCE.search(body, at)
    if m is None or not isinstance(source, str):
        return UNSURE
    try:
        found = orjson.loads(m.group(1))
    except orjson.JSONDecodeError:
        return UNSURE
    if found != source:
        return UNSURE
    return m.start(1), m.end(1)


def source_value(client: tuple[str, int] | list[object] | None) -> bytes | None:
    """A requester's ``meta.client.source``, as a JSON string: its address
    as the proxy sees it, spelled as slurmrestd names a peer (``host:port``,
    an IPv6 host in brackets); None when the connection has no address (a
    unix socket), and the stored value stands."""
    if not client:
        return None
    host, port = str(client[0]), client[1]
    if ":" in host:
        host = f"[{host}]"
    return orjson.dumps(f"{host}:{port}")


def spliced(body: bytes, span: tuple[int, int], value: bytes) -> bytes:
    """``body`` with the bytes of ``span`` replaced by ``value``."""
    start, end = span
    return b"".join((body[:start], value, body[end:]))
