"""Cache keys.

A key is a digest over length-prefixed parts, so no part can forge a
separator: ``("ab", "c")`` and ``("a", "bc")`` give different keys whatever
characters a user name, path segment or query value holds.  The parts are the
identity (the user, per the promise that an entry goes only to the same user),
the method, the canonical path segments, the canonical query
(:func:`cacheproxy.core.request.canonical_query`: every value of a key, in order)
and ``Accept`` as slurmrestd reads it (the last one forwarded; absent and
empty are told apart), since slurmrestd answers JSON or YAML by it.

All of them come from the one canonical request (:mod:`cacheproxy.core.request`,
:class:`cacheproxy.core.headers.RequestView`): what the key depends on is what
slurmrestd receives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cacheproxy.core.request import Query

KEY_VERSION = b"cacheproxy-key-2"


def _lp(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def _encode(parts: Iterable[bytes]) -> bytes:
    return b"".join(_lp(p) for p in parts)


def cache_key(
    user: str,
    method: str,
    segments: tuple[str, ...],
    query: Query,
    accept: bytes | None,
) -> bytes:
    """The store key of a response (20 bytes)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(_lp(KEY_VERSION))
    h.update(_lp(user.encode("utf-8", "surrogateescape")))
    h.update(_lp(method.encode("ascii", "replace")))
    h.update(_lp(_encode(s.encode("utf-8", "surrogateescape") for s in segments)))
    h.update(_lp(_encode(_encode((k, _encode(values))) for k, values in query)))
    h.update(b"\x00" if accept is None else _lp(accept))
    return h.digest()
