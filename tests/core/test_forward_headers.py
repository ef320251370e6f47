"""Forwarded requests: headers rebuilt in one pass, targets parsed once.

headers.py and request.py were rewritten for speed (issue 9); these pin the
behaviour the rewrite must keep, function by function and end to end.
"""

from __future__ import annotations

import httpx
import pytest

from cacheproxy.core import headers
from cacheproxy.core.request import BadRequest, from_scope, parse_target, split_path, target_of
from tests.core.asgi_transport import ASGITransport
from tests.core.conftest import auth
from tests.core.fake_slurmrestd import FakeSlurmrestd


def up(hdrs: list[tuple[bytes, bytes]], length: int | None = None) -> list[tuple[bytes, bytes]]:
    return headers.upstream_request_headers(
        hdrs, upstream_host=b"slurm:6820", client="10.1.2.3", scheme="https", body_length=length
    )


def test_end_to_end_request_headers_keep_order_and_bytes() -> None:
    given = [
        (b"host", b"proxy.example"),
        (b"x-slurm-user-name", b"alice"),
        (b"x-odd", b"\x80\xff value  with  spaces "),
        (b"accept", b"application/json"),
        (b"x-odd", b"second"),
    ]
    assert up(given, 12) == [
        (b"host", b"slurm:6820"),
        (b"x-slurm-user-name", b"alice"),
        (b"x-odd", b"\x80\xff value  with  spaces "),
        (b"accept", b"application/json"),
        (b"x-odd", b"second"),
        (b"content-length", b"12"),
        (b"x-forwarded-for", b"10.1.2.3"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"proxy.example"),
    ]


def test_hop_by_hop_and_connection_tokens_are_dropped_upstream() -> None:
    given = [
        (b"x-early", b"1"),  # named by a Connection header that comes later
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"accept-encoding", b"gzip"),
        (b"content-length", b"99"),
        (b"expect", b"100-continue"),
        (b"connection", b"X-Early, x-late"),
        (b"x-late", b"2"),
        (b"x-kept", b"3"),
    ]
    assert up(given) == [
        (b"host", b"slurm:6820"),
        (b"x-kept", b"3"),
        (b"x-forwarded-for", b"10.1.2.3"),
        (b"x-forwarded-proto", b"https"),
    ]


def test_forwarded_headers_are_rebuilt_not_copied() -> None:
    given = [
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"spoofed"),
        (b"x-forwarded-for", b"2.2.2.2"),
    ]
    assert up(given) == [
        (b"host", b"slurm:6820"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.1.2.3"),
        (b"x-forwarded-proto", b"https"),
    ]


@pytest.mark.parametrize("connection", [b"keep-alive", b"Keep-Alive", b"close", b"Close"])
def test_response_headers_usual_connection_values(connection: bytes) -> None:
    given = [
        (b"content-type", b"application/json"),
        (b"connection", connection),
        (b"keep-alive", b"timeout=5"),
        (b"content-length", b"2"),
    ]
    assert headers.response_headers(given) == [
        (b"content-type", b"application/json"),
        (b"content-length", b"2"),
    ]


def test_response_headers_drop_what_connection_names() -> None:
    given = [
        (b"x-private", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive, X-Private"),
        (b"set-cookie", b"a=b"),
    ]
    assert headers.response_headers(given) == [(b"set-cookie", b"a=b")]


def test_response_headers_without_hop_by_hop_are_a_copy() -> None:
    given = [(b"content-type", b"text/plain"), (b"x-a", b"1")]
    out = headers.response_headers(given)
    assert out == given
    out.append((b"cache-status", b"x"))
    assert len(given) == 2  # callers append: never the transport's own list


def test_split_path_fast_and_escaped_segments_agree() -> None:
    assert split_path(b"/slurm/v0.0.43//jobs/") == ("slurm", "v0.0.43", "jobs")
    assert split_path(b"/slurm/%6Aobs/a%2Fb") == ("slurm", "jobs", "a/b")
    assert split_path("/caf\u00e9".encode()) == ("caf\u00e9",)


@pytest.mark.parametrize(
    "raw",
    [b"/a/b\x01c", b"/a/%01", b"/a/\x7f", b"/a/%7F", b"/a/\xff", b"/a/%ff", b"/a/%zz", b"/.."],
)
def test_split_path_refuses_what_it_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        split_path(raw)


def test_from_scope_builds_the_request_from_the_targets_one_parse() -> None:
    scope = {
        "method": "GET",
        "path": "/slurm/v0.0.43/job/1",
        "raw_path": b"/slurm/v0.0.43/job/%31",
        "query_string": b"b=2&a=1",
        "headers": [(b"accept", b"*/*")],
        "client": ("10.0.0.9", 4242),
        "scheme": "http",
    }
    req = from_scope(scope, parse_target(*target_of(scope), 8192))
    assert req.segments == ("slurm", "v0.0.43", "job", "1")
    assert req.query == ((b"a", (b"=1",)), (b"b", (b"=2",)))
    assert req.raw_target == "/slurm/v0.0.43/job/%31?b=2&a=1"  # forwarded as received
    assert req.headers == [(b"accept", b"*/*")]


async def test_uncached_get_is_forwarded_once_with_its_headers_and_no_body(
    client: httpx.AsyncClient, transport: ASGITransport
) -> None:
    hdrs = {**auth("alice"), "X-Trace": "a\tb", "Connection": "keep-alive, X-Hop", "X-Hop": "1"}
    r = await client.get("/slurm/v0.0.43/ping", headers=hdrs)
    assert r.status_code == 200
    assert r.headers["cache-status"] == "cacheproxy; fwd=bypass"
    (sent,) = transport.sent
    assert sent.method == "GET"
    assert sent.target == "/slurm/v0.0.43/ping"
    assert sent.body == b""
    names = [k for k, _ in sent.headers]
    assert (b"x-trace", b"a\tb") in sent.headers
    assert b"x-hop" not in names
    assert b"content-length" not in names
    assert b"connection" not in names


async def test_get_with_a_body_still_forwards_it(
    client: httpx.AsyncClient, transport: ASGITransport, upstream: FakeSlurmrestd
) -> None:
    upstream.release = "23.11"  # reads a GET's body as its query
    r = await client.request(
        "GET", "/slurm/v0.0.43/ping", headers=auth("alice"), content=b'{"odd": "1"}'
    )
    assert r.status_code == 200
    assert r.json()["meta"]["query"] == {"odd": "1"}
    (sent,) = transport.sent
    assert sent.body == b'{"odd": "1"}'
    assert (b"content-length", b"12") in sent.headers


async def test_cacheable_miss_forwards_its_raw_target(
    client: httpx.AsyncClient, transport: ASGITransport
) -> None:
    """A miss reuses the memoised parse of its target, never another's: what
    goes upstream is the target exactly as this request wrote it."""
    first = "/slurm/v0.0.43/%6Aobs?b=1&a=%32"
    r = await client.get("http://proxy.test" + first, headers=auth("alice"))
    assert r.headers["cache-status"] == "cacheproxy; fwd=miss; stored"
    second = "/slurm/v0.0.43/jobs?a=2&b=1"  # the same resource, spelt otherwise
    r = await client.get("http://proxy.test" + second, headers=auth("bob"))
    assert r.headers["cache-status"] == "cacheproxy; fwd=miss; stored"
    assert [s.target for s in transport.sent] == [first, second]
