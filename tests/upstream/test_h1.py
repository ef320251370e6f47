"""What only the h1 transport promises (the shared behaviour is in
test_transport.py, run against every transport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cacheproxy.upstream import create_transport
from cacheproxy.upstream.base import UpstreamProtocolError, UpstreamRequest
from cacheproxy.upstream.h1_transport import H1Transport, encode_head
from cacheproxy.upstream.urls import UpstreamAddress, parse_upstream_url
from tests.upstream.rawserver import Conn, RawServer, Received


def test_auto_is_h1() -> None:
    assert isinstance(create_transport("http://127.0.0.1:1"), H1Transport)


def test_unknown_kind_refused() -> None:
    with pytest.raises(ValueError, match="unknown transport kind"):
        create_transport("http://127.0.0.1:1", kind="curl")


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:6820", UpstreamAddress("127.0.0.1", 6820)),
        ("http://slurm.example", UpstreamAddress("slurm.example", 80)),
        ("http://[::1]:6820/", UpstreamAddress("::1", 6820)),
        ("unix:/run/slurmrestd.sock", UpstreamAddress("localhost", 0, "/run/slurmrestd.sock")),
        ("unix:///run/s.sock", UpstreamAddress("localhost", 0, "/run/s.sock")),
        ("http+unix://%2Frun%2Fs.sock", UpstreamAddress("localhost", 0, "/run/s.sock")),
    ],
)
def test_parse_upstream_url(url: str, address: UpstreamAddress) -> None:
    assert parse_upstream_url(url) == address


@pytest.mark.parametrize("url", ["https://x:1", "ftp://x", "unix:relative.sock", "http://x/api"])
def test_parse_upstream_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_upstream_url(url)


def test_host_header_defaults() -> None:
    assert parse_upstream_url("http://[::1]:6820").host_header == b"[::1]:6820"
    assert parse_upstream_url("unix:/s.sock").host_header == b"localhost"


def test_encode_head_exact() -> None:
    head, chunked = encode_head(
        UpstreamRequest("GET", "/a?b=%20", [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2")]),
        b"default",
    )
    assert head == b"GET /a?b=%20 HTTP/1.1\r\nhost: h\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
    assert not chunked


def test_encode_head_framing() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"x"

    head, chunked = encode_head(UpstreamRequest("POST", "/", [], b""), b"d")
    assert head == b"POST / HTTP/1.1\r\nhost: d\r\ncontent-length: 0\r\n\r\n"
    head, chunked = encode_head(UpstreamRequest("PUT", "/", [], gen()), b"d")
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert chunked
    head, chunked = encode_head(
        UpstreamRequest("PUT", "/", [(b"content-length", b"1")], gen()), b"d"
    )
    assert b"chunked" not in head
    assert not chunked


async def test_idle_connections_retired_after_idle_timeout() -> None:
    srv = RawServer()
    url = await srv.start()
    transport = H1Transport(parse_upstream_url(url), idle_timeout=0.0)
    try:
        for _ in range(3):
            resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
            assert [c async for c in resp.aiter_body()] == [b"hello"]
            await resp.aclose()
        assert srv.connections == 3
    finally:
        await transport.aclose()
        await srv.stop()


async def test_connection_reusable_as_soon_as_body_drained() -> None:
    """The connection goes back to the pool when the body ends, before
    ``aclose()``: the proxy may still be sending that body to its client."""
    srv = RawServer()
    url = await srv.start()
    transport = H1Transport(parse_upstream_url(url), max_connections=1)
    try:
        first = await transport.send(UpstreamRequest("GET", "/1", [(b"host", b"up")]))
        assert [c async for c in first.aiter_body()] == [b"hello"]
        second = await transport.send(UpstreamRequest("GET", "/2", [(b"host", b"up")]))
        assert [c async for c in second.aiter_body()] == [b"hello"]
        await first.aclose()
        await second.aclose()
        assert srv.connections == 1
    finally:
        await transport.aclose()
        await srv.stop()


async def test_slow_reader_pauses_upstream() -> None:
    """An unread body does not pile up in memory: reading from slurmrestd
    pauses at the high-water mark until the consumer catches up."""
    size = 50 << 20

    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"z" * (1 << 20)
        for _ in range(size >> 20):
            await conn.write(piece)

    srv = RawServer(handler)
    url = await srv.start()
    transport = H1Transport(parse_upstream_url(url))
    try:
        resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
        body = resp.aiter_body()
        first = await body.__anext__()
        total = len(first)
        # Give the server every chance to push more; the client must not buffer it.
        for _ in range(50):
            await asyncio.sleep(0)
        conn = resp._conn
        assert conn is not None
        assert conn.buffered <= 2 * 1024 * 1024
        async for chunk in body:
            total += len(chunk)
        assert total == size
    finally:
        await transport.aclose()
        await srv.stop()


async def test_header_flood_refused() -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.respond(200, b"", [(b"X-%d" % i, b"v") for i in range(1000)])

    srv = RawServer(handler)
    url = await srv.start()
    transport = H1Transport(parse_upstream_url(url))
    try:
        with pytest.raises(UpstreamProtocolError):
            await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    finally:
        await transport.aclose()
        await srv.stop()


async def test_interleaved_bodies_arrive_intact() -> None:
    """Connections share one read buffer: answers read in turns, in pieces
    larger and smaller than the buffer, each arrive byte for byte (on
    asyncio and on uvloop, which fill a buffered protocol by their own code)."""
    size = 700 * 1024  # more than the shared buffer: several reads each

    def body_for(path: str) -> bytes:
        seed = path.encode()
        return (seed * (size // len(seed) + 1))[:size]

    async def handler(req: Received, conn: Conn) -> None:
        body = body_for(req.target.decode())
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for start in range(0, size, 90_001):
            await conn.write(body[start : start + 90_001])
            await asyncio.sleep(0.001)

    srv = RawServer(handler)
    url = await srv.start()
    transport = H1Transport(parse_upstream_url(url))

    async def fetch(path: str) -> bytes:
        resp = await transport.send(UpstreamRequest("GET", path, [(b"host", b"up")]))
        try:
            return b"".join([c async for c in resp.aiter_body()])
        finally:
            await resp.aclose()

    try:
        paths = [f"/{n}/{chr(97 + n) * (n + 1)}" for n in range(6)]
        for _ in range(2):  # the second round reuses the pooled connections
            got = await asyncio.gather(*(fetch(p) for p in paths))
            assert [g == body_for(p) for g, p in zip(got, paths, strict=True)] == [True] * 6
    finally:
        await transport.aclose()
        await srv.stop()
