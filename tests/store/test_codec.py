"""The entry codec: faithful bytes, compact where it pays, strict on input."""

from __future__ import annotations

import os

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.core.compress import make_variants
from cacheproxy.store import codec
from cacheproxy.store.base import Entry

header_names = st.binary(min_size=1, max_size=40)
header_values = st.binary(max_size=300)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    tags = tuple(draw(st.lists(st.text(max_size=30), max_size=8)))
    gens = tuple(draw(st.integers(-(2**63), 2**63 - 1)) for _ in tags)
    body = draw(st.one_of(st.binary(max_size=5000), st.just(b'{"a": 1}' * 700)))
    variants = draw(
        st.one_of(
            st.just(()),
            st.just(make_variants(body)),
            st.lists(st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=100))).map(
                tuple
            ),
        )
    )
    return Entry(
        status=draw(st.integers(100, 599)),
        headers=draw(st.lists(st.tuples(header_names, header_values), max_size=12)),
        body=body,
        stored_at=draw(finite),
        ttl=draw(finite),
        tags=tags,
        generations=gens,
        stale_for=draw(finite),
        variants=variants,
        origin=draw(finite),
    )


@given(entries(), st.sampled_from([0, 64, 1024, 10**9]))
def test_roundtrip_is_exact(entry: Entry, compress_min: int) -> None:
    assert codec.decode(codec.encode(entry, compress_min_bytes=compress_min)) == entry


def _entry(body: bytes, variants: tuple[tuple[bytes, bytes], ...] = ()) -> Entry:
    return Entry(
        200,
        [(b"content-type", b"application/json")],
        body,
        1.0,
        2.0,
        ("t",),
        (7,),
        variants=variants,
    )


def test_json_without_variants_is_compressed_as_a_whole() -> None:
    body = b'{"job_id": 1, "state": "RUNNING"},' * 20_000
    blob = codec.encode(_entry(body))
    assert blob[1] & codec.WHOLE_ZSTD
    assert len(blob) < len(body) / 5
    assert codec.decode(blob).body == body


def test_random_body_is_stored_as_is() -> None:
    body = os.urandom(200_000)
    blob = codec.encode(_entry(body))
    assert blob[1] == 0
    assert len(blob) < len(body) + 200


def test_body_is_not_stored_twice_when_a_zstd_copy_exists() -> None:
    body = b'{"job_id": 1, "state": "RUNNING"},' * 20_000
    variants = make_variants(body)
    blob = codec.encode(_entry(body, variants))
    assert blob[1] & codec.BODY_IN_ZSTD
    assert len(blob) < sum(len(v) for _, v in variants) + 500
    assert codec.decode(blob) == _entry(body, variants)


def test_a_zstd_copy_of_something_else_is_not_trusted() -> None:
    body = b"x" * 10_000
    other = zstandard.ZstdCompressor().compress(b"y" * 9_999)
    blob = codec.encode(_entry(body, ((b"zstd", other),)))
    assert not blob[1] & codec.BODY_IN_ZSTD
    assert codec.decode(blob).body == body


def test_a_zstd_copy_that_is_not_zstd_is_not_trusted() -> None:
    body = b"x" * 10_000
    blob = codec.encode(_entry(body, ((b"zstd", b"not a zstd frame"),)))
    assert not blob[1] & codec.BODY_IN_ZSTD
    assert codec.decode(blob) == _entry(body, ((b"zstd", b"not a zstd frame"),))


def test_a_zstd_copy_without_content_size_still_decodes() -> None:
    body = b"abc" * 10_000
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    copy = cctx.compress(body)
    blob = codec.encode(_entry(body, ((b"zstd", copy),)))
    assert codec.decode(blob).body == body


@pytest.mark.parametrize(
    "blob", [b"", b"\x01", b"\x02\x00" + b"\x00" * 60, b"\x01\x00\x00", b"\x01\x01garbage"]
)
def test_garbage_is_a_codec_error(blob: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(blob)


def test_truncated_entry_is_a_codec_error() -> None:
    blob = codec.encode(_entry(b"body", ((b"gzip", b"x" * 50),)), compress_min_bytes=10**9)
    for cut in range(2, len(blob) - 5, 7):
        try:
            decoded = codec.decode(blob[:cut])
        except codec.CodecError:
            continue
        assert decoded != _entry(b"body", ((b"gzip", b"x" * 50),))
