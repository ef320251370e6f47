"""Finding ``meta.client.source`` once and splicing a requester's own in,
plain and gzip-encoded, on slurmrestd's real answers."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import orjson
import pytest

from cacheproxy.core import splice
from cacheproxy.store import codec
from cacheproxy.store.base import Entry

EXAMPLES = Path("/work/shared/slurm-openapi/examples")
REAL = sorted(p for p in EXAMPLES.glob("2*-v0.0.4*/*.json") if p.name != "status.json")
JSON = b"application/json"


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_answers_spliced_plain_and_gzip(path: Path) -> None:
    body = path.read_bytes()
    span = splice.source_span(body, JSON)
    assert span is not None
    assert span != splice.UNSURE
    value = orjson.dumps("[2001:db8::1]:4242")
    out = splice.spliced(body, span, value)
    doc, want = orjson.loads(out), orjson.loads(body)
    assert doc["meta"]["client"]["source"] == "[2001:db8::1]:4242"
    want["meta"]["client"]["source"] = "[2001:db8::1]:4242"
    assert doc == want
    assert out.replace(value, b"") == body.replace(body[span[0] : span[1]], b"")
    encoded = splice.spliced_gzip(body, span, splice.gzip_parts(body, span), value)
    assert gzip.decompress(encoded) == out
    # one gzip member: a client inflating once (curl, browsers) gets it all
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflate.decompress(encoded) == out
    assert inflate.eof
    assert not inflate.unused_data


def test_no_client_in_22_05_and_unsure_shapes() -> None:
    legacy = (EXAMPLES / "22.05.8-v0.0.38" / "jobs.json").read_bytes()
    assert splice.source_span(legacy, JSON) is None
    assert splice.source_span(b"meta:\n  client:\n    source: x\n", b"application/x-yaml") == (
        splice.UNSURE
    )
    tricky = (
        b'{"jobs": [{"comment": "\\"meta\\": {\\"client\\""}], "meta": {"client": {"source": "a"}}}'
    )
    span = splice.source_span(tricky, JSON)
    assert span is not None
    assert tricky[span[0] : span[1]] == b'"a"'
    nested_last = b'{"meta": {"client": {"source": "a"}}, "jobs": [{"meta": 1}]}'
    assert splice.source_span(nested_last, JSON) == splice.UNSURE


def test_codec_keeps_the_offsets() -> None:
    body = (EXAMPLES / "25.11-v0.0.44" / "slurm-nodes.json").read_bytes()
    span = splice.source_span(body, JSON)
    assert span is not None
    entry = Entry(200, [(b"content-type", JSON)], body, 1.0, 5.0, ("t",), (1,), splice=span)
    assert codec.decode(codec.encode(entry)).splice == span
    plain = Entry(200, [], b"x" * 5000, 1.0, 5.0, ("t",), (1,))
    assert codec.decode(codec.encode(plain)).splice is None
