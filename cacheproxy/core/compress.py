"""Compression of stored entries.

slurmrestd sends uncompressed JSON only; its lists compress about ten times.
An entry is compressed once, when stored, and every client that accepts an
encoding gets the compressed bytes as they are: a hit never compresses.
"""

from __future__ import annotations

import functools
import gzip

import zstandard

MIN_BYTES = 1400
"""Below about one packet compression saves nothing worth its CPU."""
_MAX_RATIO = 0.9
"""Keep a variant only if it is at least 10% smaller."""
PREFERENCE = (b"zstd", b"gzip")
"""Server preference when a client accepts several: zstd decodes fastest."""
_COMPRESSIBLE = (b"json", b"yaml", b"text/")
_MEMO_MAX = 1024

ZSTD_LEVEL = 3


def compressible(content_type: bytes | None) -> bool:
    ct = (content_type or b"").lower()
    return any(marker in ct for marker in _COMPRESSIBLE)


def make_variants(
    body: bytes, splice_at: tuple[int, int] | None = None
) -> tuple[tuple[bytes, bytes], ...]:
    """Compressed copies of ``body`` worth keeping (CPU-bound: call it in a
    worker thread for large bodies).  A shared entry (``splice_at``: where
    each requester's ``meta.client.source`` goes) keeps only the gzip parts
    its answers are made of (:mod:`cacheproxy.core.splice`)."""
    if len(body) < MIN_BYTES:
        return ()
    # A large body gets a faster gzip level: 50 MB at level 6 costs seconds.
    level = 6 if len(body) < 4 * 1024 * 1024 else 1
    if splice_at is not None:
        from cacheproxy.core import splice

        return ((splice.SPLICED_GZIP, splice.gzip_parts(body, splice_at, level)),)
    out = []
    for name, data in (
        # A compressor per call: a shared ZstdCompressor is not thread-safe,
        # and large bodies are compressed in worker threads.
        (b"zstd", zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)),
        (b"gzip", gzip.compress(body, compresslevel=level, mtime=0)),
    ):
        if len(data) <= len(body) * _MAX_RATIO:
            out.append((name, data))
    return tuple(out)


@functools.lru_cache(maxsize=_MEMO_MAX)
def accepted(accept_encoding: bytes) -> frozenset[bytes]:
    """The codings a client accepts (q > 0), from its Accept-Encoding value
    (memoised: clients send a handful of distinct values)."""
    codings = set()
    for item in accept_encoding.lower().split(b","):
        name, _, params = item.strip().partition(b";")
        q = 1.0
        for param in params.split(b";"):
            k, _, v = param.strip().partition(b"=")
            if k == b"q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if name and q > 0:
            codings.add(name)
    if b"*" in codings:
        codings.update(PREFERENCE)
    return frozenset(codings)


def choose(
    accept_encoding: bytes, variants: tuple[tuple[bytes, bytes], ...]
) -> tuple[bytes, bytes] | None:
    """The variant to send, or None for the identity body."""
    if not accept_encoding or not variants:
        return None
    ok = accepted(accept_encoding)
    for preferred in PREFERENCE:
        if preferred in ok:
            for name, data in variants:
                if name == preferred:
                    return name, data
    return None
