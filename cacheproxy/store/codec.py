"""A compact, versioned binary form of an :class:`~cacheproxy.store.base.Entry`.

Why not JSON or pickle: bodies, variants and header values are raw bytes
(JSON would need base64, +33 %), and unpickling what a shared Redis holds
would let anyone able to write to Redis run code in every replica.

Layout::

    u8  format (1)          u8  flags
    --- payload (zstd-compressed as a whole when flags & WHOLE_ZSTD) ---
    u16 status   f64 stored_at   f64 ttl   f64 stale_for   f64 origin
    u16 ntags    u16 nheaders    u8 nvariants
    ntags     x (u16 len, utf-8 tag, i64 generation)
    nheaders  x (u16 len, name, u32 len, value)
    nvariants x (u8 len, coding, u32 len, data)
    u32 start, u32 end      (only when flags & SPLICE: Entry.splice)
    body (the rest; absent when flags & BODY_IN_ZSTD)

Size, and the CPU of a store: the proxy already keeps compressed copies of
compressible bodies (``Entry.variants``).  When a zstd copy exists the body
itself is *not* written: it is the decompression of that copy (checked
against the frame's declared size), so a 5 MB JSON list costs its ~0.5 MB
zstd copy plus the gzip copy in Redis, and storing compresses nothing again.
Without a zstd copy the payload is compressed as a whole when it is big
enough and that pays (at least 10 % smaller); random or already compressed
bodies are stored as they are.
"""

from __future__ import annotations

import struct
from typing import Any

import zstandard

from cacheproxy.store.base import Entry

FORMAT = 1
WHOLE_ZSTD = 1
BODY_IN_ZSTD = 2
SPLICE = 4
_SPAN = struct.Struct("<II")
_HEAD = struct.Struct("<BB")
_FIXED = struct.Struct("<HddddHHB")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_MIN_GAIN = 0.9
_BODY_IN_ZSTD_MIN = 4096
"""Smaller bodies are kept as they are: decompressing would cost more than
the bytes it saves."""


class CodecError(ValueError):
    """Bytes that are not an entry in a format this version understands."""


def encode(entry: Entry, *, compress_min_bytes: int = 1024, level: int = 3) -> bytes:
    """Serialise ``entry`` (CPU-bound for big bodies: run it in a thread)."""
    if len(entry.tags) != len(entry.generations):
        raise ValueError("an entry needs one generation per tag")
    flags = 0
    zstd_copy = next((data for name, data in entry.variants if name == b"zstd"), None)
    if (
        zstd_copy is not None
        and len(entry.body) >= _BODY_IN_ZSTD_MIN
        and _content_size(zstd_copy) == len(entry.body)
    ):
        flags |= BODY_IN_ZSTD
    parts: list[bytes] = [
        _FIXED.pack(
            entry.status,
            entry.stored_at,
            entry.ttl,
            entry.stale_for,
            entry.origin,
            len(entry.tags),
            len(entry.headers),
            len(entry.variants),
        )
    ]
    for tag, gen in zip(entry.tags, entry.generations, strict=True):
        raw = tag.encode()
        parts += (_U16.pack(len(raw)), raw, _I64.pack(gen))
    for name, value in entry.headers:
        parts += (_U16.pack(len(name)), name, _U32.pack(len(value)), value)
    for coding, data in entry.variants:
        parts += (_U8.pack(len(coding)), coding, _U32.pack(len(data)), data)
    if entry.splice is not None:
        flags |= SPLICE
        parts.append(_SPAN.pack(*entry.splice))
    if not flags & BODY_IN_ZSTD:
        parts.append(entry.body)
    payload = b"".join(parts)
    if not entry.variants and len(payload) >= compress_min_bytes:
        packed = zstandard.ZstdCompressor(level=level).compress(payload)
        if len(packed) <= len(payload) * _MIN_GAIN:
            return _HEAD.pack(FORMAT, flags | WHOLE_ZSTD) + packed
    return _HEAD.pack(FORMAT, flags) + payload


def _content_size(frame: bytes) -> int:
    """The size a zstd frame declares (-1: unknown, or not a zstd frame)."""
    try:
        return int(zstandard.frame_content_size(frame))
    except zstandard.ZstdError:
        return -1


def needs_cpu(blob: bytes | memoryview) -> bool:
    """Whether decoding ``blob`` decompresses something."""
    return len(blob) >= _HEAD.size and blob[1] & (WHOLE_ZSTD | BODY_IN_ZSTD) != 0


def _decompress(data: bytes | memoryview) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError:  # a frame without its content size
        return zstandard.ZstdDecompressor().decompressobj().decompress(bytes(data))


class _Reader:
    __slots__ = ("buf", "off")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf)
        self.off = 0

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        values = st.unpack_from(self.buf, self.off)
        self.off += st.size
        return values

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[self.off : self.off + n])
        if len(out) != n:
            raise CodecError("truncated entry")
        self.off += n
        return out

    def rest(self) -> bytes:
        return bytes(self.buf[self.off :])


def decode(blob: bytes | memoryview) -> Entry:
    """The entry ``blob`` holds; :class:`CodecError` when it is not one."""
    try:
        fmt, flags = _HEAD.unpack_from(blob)
        if fmt != FORMAT:
            raise CodecError(f"unknown entry format {fmt}")
        payload = memoryview(blob)[_HEAD.size :]
        r = _Reader(_decompress(payload) if flags & WHOLE_ZSTD else payload)
        status, stored_at, ttl, stale_for, origin, ntags, nheaders, nvariants = r.unpack(_FIXED)
        tags: list[str] = []
        gens: list[int] = []
        for _ in range(ntags):
            tags.append(r.take(r.unpack(_U16)[0]).decode())
            gens.append(r.unpack(_I64)[0])
        headers: list[tuple[bytes, bytes]] = []
        for _ in range(nheaders):
            name = r.take(r.unpack(_U16)[0])
            headers.append((name, r.take(r.unpack(_U32)[0])))
        variants: list[tuple[bytes, bytes]] = []
        for _ in range(nvariants):
            coding = r.take(r.unpack(_U8)[0])
            variants.append((coding, r.take(r.unpack(_U32)[0])))
        splice = r.unpack(_SPAN) if flags & SPLICE else None
        body = _decompress(dict(variants)[b"zstd"]) if flags & BODY_IN_ZSTD else r.rest()
    except (struct.error, UnicodeDecodeError, zstandard.ZstdError, KeyError) as exc:
        raise CodecError(str(exc) or type(exc).__name__) from exc
    return Entry(
        status=status,
        headers=headers,
        body=body,
        stored_at=stored_at,
        ttl=ttl,
        tags=tuple(tags),
        generations=tuple(gens),
        stale_for=stale_for,
        variants=tuple(variants),
        origin=origin,
        splice=None if splice is None else (splice[0], splice[1]),
    )
