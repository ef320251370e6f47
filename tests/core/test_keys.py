"""Cache keys: equivalent requests share one, anything that changes the
answer (user, method, path, query, Accept) gives another."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.core.keys import cache_key
from cacheproxy.core.request import Query, canonical_query, split_path

segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
segments = st.lists(segment, min_size=1, max_size=5).map(tuple)
word = st.text(alphabet="abcXYZ019-._~ %+&;=/,", max_size=6)
query = st.lists(st.tuples(word.filter(bool), word), max_size=4, unique_by=lambda p: p[0])
users = st.text(min_size=1, max_size=10)


def encode(segs: tuple[str, ...], slashes: list[int]) -> bytes:
    """A raw path for ``segs`` with extra empty segments sprinkled in."""
    out = ""
    for i, s in enumerate(segs):
        out += "/" * (1 + (slashes[i % len(slashes)] if slashes else 0)) + quote(s, safe="")
    return out.encode()


@given(segments, st.lists(st.integers(0, 2), max_size=4), st.booleans())
def test_equivalent_paths_give_one_key(
    segs: tuple[str, ...], slashes: list[int], trailing: bool
) -> None:
    raw = encode(segs, slashes) + (b"/" if trailing else b"")
    assert split_path(raw) == segs
    assert cache_key("u", "GET", split_path(raw), (), b"") == cache_key("u", "GET", segs, (), b"")


def q(pairs: list[tuple[str, str]]) -> Query:
    raw = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode()
    parsed = canonical_query(raw)
    assert parsed is not None
    return parsed


@given(query)
def test_order_of_distinct_keys_does_not_matter(pairs: list[tuple[str, str]]) -> None:
    """Every release reads the query into a dictionary: the order of
    different keys changes nothing (``;`` separates like ``&``)."""
    assert q(pairs) == q(list(reversed(pairs)))
    semi = ";".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode()
    assert canonical_query(semi) == q(pairs)


@given(users, users, segments, query, st.binary(max_size=8))
def test_another_user_gives_another_key(
    a: str, b: str, segs: tuple[str, ...], pairs: list[tuple[str, str]], accept: bytes
) -> None:
    qq = q(pairs)
    same = cache_key(a, "GET", segs, qq, accept) == cache_key(b, "GET", segs, qq, accept)
    assert same == (a == b)


@given(segments, segments)
def test_another_path_gives_another_key(s1: tuple[str, ...], s2: tuple[str, ...]) -> None:
    assert (cache_key("u", "GET", s1, (), b"") == cache_key("u", "GET", s2, (), b"")) == (s1 == s2)


@given(query, query)
def test_another_query_gives_another_key(
    q1: list[tuple[str, str]], q2: list[tuple[str, str]]
) -> None:
    a, b = q(q1), q(q2)
    assert (cache_key("u", "GET", ("x",), a, b"") == cache_key("u", "GET", ("x",), b, b"")) == (
        dict(q1) == dict(q2)
    )


@given(st.binary(max_size=10), st.binary(max_size=10))
def test_another_accept_gives_another_key(a: bytes, b: bytes) -> None:
    assert (cache_key("u", "GET", ("x",), (), a) == cache_key("u", "GET", ("x",), (), b)) == (
        a == b
    )


def test_parts_cannot_forge_a_separator() -> None:
    assert cache_key("ab", "GET", ("c",), (), b"") != cache_key("a", "GET", ("bc",), (), b"")
    assert cache_key("u", "GET", ("a/b",), (), b"") != cache_key("u", "GET", ("a", "b"), (), b"")
    assert cache_key("u", "GET", ("x",), q([("a", "b=c")]), b"") != cache_key(
        "u", "GET", ("x",), q([("a=b", "c")]), b""
    )
    assert cache_key("u", "GET", ("x",), q([("a", "b")]), b"") != cache_key(
        "u", "GET", ("x", "a", "b"), (), b""
    )
    assert cache_key("u", "GET", ("x",), (), None) != cache_key("u", "GET", ("x",), (), b"")


def test_encoded_slash_is_one_segment() -> None:
    assert split_path(b"/slurm/v0.0.43/node/a%2Fb") == ("slurm", "v0.0.43", "node", "a/b")
