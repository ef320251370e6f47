"""Serialise bodies the way each slurmrestd release does.

22.05 writes with json-c (``SPACED|PRETTY``): 2-space indent, ``/`` escaped as
``\\/``, and empty containers opened and closed on separate lines::

    "errors": [
    ],

25.x writes plain 2-space pretty JSON.  orjson does the heavy lifting; the
22.05 quirks are a cheap byte-level post-pass.  Bodies are assembled from
pre-rendered members so that a large cached member (the job list) is reused
while small per-request members (``meta.client``, ``last_update``) are not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

_OPTS = orjson.OPT_INDENT_2
_EMPTY_ENDINGS = (b"[]", b"{}", b"[],", b"{},")


def legacy_quirks(data: bytes) -> bytes:
    """Apply json-c's output habits (22.05) to orjson's pretty output.

    An empty container can only end a line when it is structural (a string
    value always ends in a quote), so a line-by-line pass is exact; it is
    an order of magnitude faster than a multi-line regex on large bodies.
    """
    if b"[]" in data or b"{}" in data:
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if line.endswith(_EMPTY_ENDINGS):
                indent = line[: len(line) - len(line.lstrip(b" "))]
                comma = b"," if line.endswith(b",") else b""
                core = line[:-1] if comma else line
                lines[i] = core[:-1] + b"\n" + indent + core[-1:] + comma
        data = b"\n".join(lines)
    return data.replace(b"/", b"\\/")


def value_at_level1(value: Any) -> bytes:
    """Pretty JSON for a value that sits one level deep (under a top-level key).

    Returns the text without the quirks post-pass: callers apply it on the
    whole member line so that the empty-container rewrite sees the real indent.
    """
    return orjson.dumps(value, option=_OPTS).replace(b"\n", b"\n  ")


def member(key: str, value: Any, legacy: bool) -> bytes:
    """One ``  "key": value`` member of a top-level object, fully formatted."""
    raw = b'  "' + key.encode() + b'": ' + value_at_level1(value)
    return legacy_quirks(raw) if legacy else raw


def assemble(members: Iterable[bytes]) -> list[bytes]:
    """Join formatted members into a top-level object, as a list of chunks.

    The chunks are sent one by one, so a large cached member is never copied.
    """
    chunks: list[bytes] = [b"{\n"]
    first = True
    for m in members:
        if not first:
            chunks.append(b",\n")
        chunks.append(m)
        first = False
    chunks.append(b"\n}")
    return chunks


def dumps(obj: dict[str, Any], legacy: bool) -> bytes:
    """A whole small body in one go."""
    return b"".join(assemble(member(k, v, legacy) for k, v in obj.items()))
