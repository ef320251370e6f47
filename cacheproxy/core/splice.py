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

Compressed answers: a gzip member's deflate stream may be any sequence of
blocks, so the part before the value and the part after it are compressed
once, when stored, each on its own (the first ending on a byte-aligned sync
flush, so blocks can follow it; neither refers back into another part), and
each answer is the header, those two parts around the requester's value
(a few bytes, compressed per answer), and the CRC-32 and length of the
whole.  The CRC runs over the value and the part after it, which
v0.0.40 and later keep short (``meta`` is last).  No zstd copy: a zstd
answer would be several frames, which not every client decodes.
"""

from __future__ import annotations

import re
import struct
import zlib
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


SPLICED_GZIP = b"gzip-spliced"
"""The variant name of a shared entry's gzip parts (never an encoding a
client names, so never chosen as a whole)."""
_GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_PARTS = struct.Struct("<II")


def _deflate(data: bytes, level: int, mode: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush(mode)


def gzip_parts(body: bytes, span: tuple[int, int], level: int = 6) -> bytes:
    """What :func:`spliced_gzip` needs, made once when stored: the deflated
    part before ``span`` (sync-flushed), its CRC-32, and the deflated part
    after it (finished), packed as one variant."""
    start, end = span
    head = _deflate(body[:start], level, zlib.Z_SYNC_FLUSH)
    tail = _deflate(body[end:], level, zlib.Z_FINISH)
    return _PARTS.pack(len(head), zlib.crc32(body[:start])) + head + tail


def spliced_gzip(body: bytes, span: tuple[int, int], parts: bytes, value: bytes) -> bytes:
    """The gzip encoding of ``spliced(body, span, value)``, from ``parts``."""
    start, end = span
    head_len, crc = _PARTS.unpack_from(parts)
    head = memoryview(parts)[_PARTS.size : _PARTS.size + head_len]
    tail = memoryview(parts)[_PARTS.size + head_len :]
    crc = zlib.crc32(body[end:], zlib.crc32(value, crc))
    size = (start + len(value) + len(body) - end) & 0xFFFFFFFF
    middle = _deflate(value, 1, zlib.Z_SYNC_FLUSH)
    return b"".join((_GZIP_HEAD, head, middle, tail, struct.pack("<II", crc, size)))
