"""Whether and how upstream's answer is stored."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.clock import Clock
from tests.core.decide.states import GENS, jobs

JSON = [(b"content-type", b"application/json"), (b"content-length", b"99")]
OK = b'{"errors": [], "jobs": []}'


def store(status: int = 200, headers=JSON, body: bytes = OK, **kw: object) -> decide.Store | None:  # type: ignore[no-untyped-def]
    clock = Clock()
    args: dict[str, object] = {"shareable": True, "max_entry_bytes": 1 << 20}
    args.update(kw)
    return decide.to_store(
        status,
        headers,
        body,
        jobs(),
        GENS,
        now=clock(),
        origin=clock() - 1,
        **args,  # type: ignore[arg-type]
    )


def test_a_clean_200_is_stored_with_its_true_length_and_generations() -> None:
    s = store()
    assert s is not None
    clock = Clock()
    assert s.entry.stored_at == clock()
    assert s.entry.origin == clock() - 1
    assert s.entry.generations == GENS
    assert s.entry.tags == jobs().tags
    assert (b"content-length", b"%d" % len(OK)) in s.entry.headers
    assert s.compress_now
    assert not s.compress_later


def test_large_bodies_are_compressed_later() -> None:
    body = b'{"errors": [], "x": "' + b"a" * 70_000 + b'"}'
    s = store(body=body)
    assert s is not None
    assert s.compress_later
    assert not s.compress_now


def test_not_stored() -> None:
    assert store(status=500) is None
    assert store(body=b'{"errors": [{"error": "x"}]}') is None
    assert store(shareable=False) is None
    assert store(max_entry_bytes=3) is None
    assert store(headers=[*JSON, (b"cache-control", b"no-store")]) is None
