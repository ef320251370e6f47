"""Cache keys.

A key is a digest over length-prefixed parts, so no part can forge a
separator: ``("ab", "c")`` and ``("a", "bc")`` give different keys whatever
characters a user name, path segment or query value holds.  The parts are the
identity (the user, per the promise that an entry goes only to the same user),
the method, the canonical path segments, the sorted query and ``Accept``
(slurmrestd answers JSON or YAML by it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

KEY_VERSION = b"cacheproxy-key-1"


def _lp(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def _encode(parts: Iterable[bytes]) -> bytes:
    return b"".join(_lp(p) for p in parts)


def cache_key(
    user: str,
    method: str,
    segments: tuple[str, ...],
    query: tuple[tuple[str, str], ...],
    accept: bytes,
) -> bytes:
    """The store key of a response (20 bytes)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(_lp(KEY_VERSION))
    h.update(_lp(user.encode("utf-8", "surrogateescape")))
    h.update(_lp(method.encode("ascii", "replace")))
    h.update(_lp(_encode(s.encode("utf-8", "surrogateescape") for s in segments)))
    h.update(
        _lp(
            _encode(
                _encode(
                    (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                )
                for k, v in query
            )
        )
    )
    h.update(_lp(accept))
    return h.digest()
