"""Behaviour of every transport against a server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cacheproxy.upstream.base import (
    Transport,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
)
from tests.upstream.conftest import MakeTransport
from tests.upstream.rawserver import Conn, RawServer, Received

MB = 1 << 20


async def body_of(resp: UpstreamResponse) -> bytes:
    try:
        return b"".join([c async for c in resp.aiter_body()])
    finally:
        await resp.aclose()


async def get(transport: Transport, target: str = "/x", **kw: object) -> tuple[int, bytes]:
    resp = await transport.send(UpstreamRequest("GET", target, [(b"host", b"up")], **kw))  # type: ignore[arg-type]
    return resp.status, await body_of(resp)


# --- the request goes out byte-exact -------------------------------------------------


async def test_target_and_headers_arrive_byte_exact(
    server: RawServer, transport: Transport
) -> None:
    target = "/slurm/v0.0.38/jobs?a=%2F%20b&c=d+e&x=%7e&y=%C3%A9&z=a%3Db&&empty=&q=%25"
    headers = [
        (b"host", b"slurm.example:6820"),
        (b"x-slurm-user-name", b"alice"),
        (b"x-slurm-user-token", b"tok;en=with\"odd' chars"),
        (b"accept", b"application/json"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]
    resp = await transport.send(UpstreamRequest("GET", target, headers))
    assert await body_of(resp) == b"hello"
    (got,) = server.received
    assert got.target == target.encode()
    assert got.version == b"HTTP/1.1"
    assert [(k.lower(), v) for k, v in got.headers] == headers


async def test_post_body_and_headers_exact(server: RawServer, transport: Transport) -> None:
    body = b'{"job": {"name": "x"}}'
    headers = [
        (b"host", b"up"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    resp = await transport.send(UpstreamRequest("POST", "/slurm/v0.0.38/job/submit", headers, body))
    await body_of(resp)
    (got,) = server.received
    assert got.method == "POST"
    assert got.body == body
    assert [(k.lower(), v) for k, v in got.headers] == headers


async def test_no_headers_invented(server: RawServer, transport: Transport) -> None:
    """No User-Agent, Accept, Accept-Encoding or Content-Type of the client's own;
    a body without a length gets a Content-Length, and a missing Host one."""
    resp = await transport.send(UpstreamRequest("DELETE", "/slurm/v0.0.38/job/1", [], b"abc"))
    await body_of(resp)
    (got,) = server.received
    names = {k.lower() for k, _ in got.headers}
    assert names <= {b"host", b"content-length"}, got.headers
    assert got.header(b"content-length") == b"3"
    assert got.body == b"abc"


async def test_response_headers_lowercased_in_wire_order(
    server: RawServer, transport: Transport
) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(
            b"HTTP/1.1 201 Created\r\nX-B: 2\r\nSet-Cookie: a=1\r\nX-A: 1\r\n"
            b"set-cookie: b=2\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )

    server.handler = handler
    resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    assert resp.status == 201
    assert resp.headers == [
        (b"x-b", b"2"),
        (b"set-cookie", b"a=1"),
        (b"x-a", b"1"),
        (b"set-cookie", b"b=2"),
        (b"content-type", b"application/json"),
        (b"content-length", b"2"),
    ]
    assert await body_of(resp) == b"{}"


async def test_compressed_body_not_decoded(server: RawServer, transport: Transport) -> None:
    import gzip

    payload = gzip.compress(b"x" * 1000)

    async def handler(req: Received, conn: Conn) -> None:
        await conn.respond(200, payload, [(b"Content-Encoding", b"gzip")])

    server.handler = handler
    resp = await transport.send(
        UpstreamRequest("GET", "/", [(b"host", b"up"), (b"accept-encoding", b"gzip")])
    )
    assert (b"content-encoding", b"gzip") in resp.headers
    assert await body_of(resp) == payload


# --- body framing ----------------------------------------------------------------------


async def test_chunked_response_is_dechunked(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await conn.write(b"5\r\nhello\r\n")
        await conn.write(b"1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n")

    server.handler = handler
    for _ in range(2):  # and the connection is reusable afterwards
        assert await get(transport) == (200, b"hello world!")
    assert server.connections == 1


async def test_close_delimited_body(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ")
        await conn.write(b"the end")
        conn.close()

    server.handler = handler
    assert await get(transport) == (200, b"until the end")
    assert await get(transport) == (200, b"until the end")
    assert server.connections == 2


async def test_head_and_204_have_no_body(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        if req.method == "HEAD":
            await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        else:
            await conn.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    server.handler = handler
    resp = await transport.send(UpstreamRequest("HEAD", "/", [(b"host", b"up")]))
    assert resp.status == 200
    assert (b"content-length", b"1000") in resp.headers
    assert await body_of(resp) == b""
    assert await get(transport) == (204, b"")
    assert await get(transport) == (204, b"")
    # A HEAD answer may retire its connection (llhttp cannot be told it has
    # no body); the 204s share one.
    assert server.connections <= 2


# --- slurmrestd's quirks --------------------------------------------------------------


async def test_bare_304_without_headers(server: RawServer, transport: Transport) -> None:
    """slurmrestd answers ``?update_time=`` with a status line and nothing else."""

    async def handler(req: Received, conn: Conn) -> None:
        if b"update_time" in req.target:
            await conn.write(b"HTTP/1.1 304 NOT MODIFIED\r\n\r\n")
        else:
            await conn.respond(200, b"[]")

    server.handler = handler
    for _ in range(3):
        resp = await transport.send(
            UpstreamRequest("GET", "/jobs?update_time=17", [(b"host", b"up")])
        )
        assert resp.status == 304
        assert resp.headers == []
        assert await body_of(resp) == b""
        assert await get(transport, "/jobs") == (200, b"[]")
    assert server.connections == 1  # keep-alive after a bare 304


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_connection_close_after_every_error(
    server: RawServer, transport: Transport, method: str
) -> None:
    """slurmrestd sends ``Connection: Close`` and closes after each error answer:
    no request after it may fail because of that."""

    async def handler(req: Received, conn: Conn) -> None:
        if req.target.startswith(b"/bad"):
            await conn.respond(
                404, b'{"errors": []}', [(b"Connection", b"Close")], reason=b"NOT FOUND"
            )
            conn.close()
        else:
            await conn.respond(200, b"ok")

    server.handler = handler
    for i in range(6):
        target = "/bad" if i % 2 else "/good"
        resp = await transport.send(UpstreamRequest(method, target, [(b"host", b"up")], b"x"))
        assert resp.status == (404 if i % 2 else 200)
        await body_of(resp)
    assert server.count(method) == 6  # nothing retried, nothing failed


# --- retries ------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True], ids=["fin", "rst"])
async def test_get_retried_once_on_stale_pooled_connection(
    server: RawServer, transport: Transport, abort: bool
) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        if req.index_on_conn == 0:
            await conn.respond(200, b"fresh")
        elif abort:
            conn.abort()
        else:
            conn.close()

    server.handler = handler
    assert await get(transport) == (200, b"fresh")
    assert await get(transport, retry_on_stale_connection=True) == (200, b"fresh")
    assert server.count("GET") == 3
    assert server.connections == 2


async def test_get_not_retried_without_permission(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        if req.index_on_conn == 0:
            await conn.respond(200, b"fresh")
        else:
            conn.close()

    server.handler = handler
    assert await get(transport) == (200, b"fresh")
    with pytest.raises(UpstreamProtocolError) as info:
        await get(transport, retry_on_stale_connection=False)
    assert info.value.sent
    assert server.count("GET") == 2


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_write_never_retried(server: RawServer, transport: Transport, method: str) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        if req.index_on_conn == 0:
            await conn.respond(200, b"fresh")
        else:
            conn.close()

    server.handler = handler
    assert await get(transport) == (200, b"fresh")
    with pytest.raises(UpstreamProtocolError) as info:
        await transport.send(
            UpstreamRequest(
                method, "/job/1", [(b"host", b"up")], b"{}", retry_on_stale_connection=True
            )
        )
    assert info.value.sent
    assert server.count(method) == 1


async def test_get_retried_at_most_once(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        if conn.id == 1 and req.index_on_conn == 0:
            await conn.respond(200, b"fresh")
        else:
            conn.close()

    server.handler = handler
    assert await get(transport) == (200, b"fresh")
    with pytest.raises(UpstreamProtocolError):
        await get(transport, retry_on_stale_connection=True)
    assert server.count("GET") == 3


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_disconnect_mid_body_raises(
    server: RawServer, transport: Transport, framing: str
) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        if framing == "length":
            await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 1000)
        else:
            await conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n")
            await conn.write(b"a" * 1000 + b"\r\n")
        conn.close()

    server.handler = handler
    resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    assert resp.status == 200
    received: list[bytes] = []

    async def drain() -> None:
        async for chunk in resp.aiter_body():
            received.append(chunk)

    with pytest.raises(UpstreamProtocolError) as info:
        await drain()
    assert info.value.sent
    assert len(b"".join(received)) <= 1000
    await resp.aclose()
    # The transport is still usable afterwards.
    server.handler = lambda req, conn: conn.respond(200, b"ok")
    assert await get(transport) == (200, b"ok")


async def test_disconnect_before_head_raises(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 O")
        conn.close()

    server.handler = handler
    with pytest.raises(UpstreamProtocolError) as info:
        await transport.send(UpstreamRequest("POST", "/", [(b"host", b"up")], b"x"))
    assert info.value.sent
    assert server.count("POST") == 1


async def test_malformed_response_raises(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"SPDY/9 banana\r\n\r\n")
        conn.close()

    server.handler = handler
    with pytest.raises(UpstreamProtocolError):
        await get(transport)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_refused(make_transport: MakeTransport) -> None:
    transport = make_transport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamConnectError) as info:
        await transport.send(UpstreamRequest("POST", "/", [(b"host", b"up")], b"x"))
    assert info.value.sent is False


async def test_missing_unix_socket(make_transport: MakeTransport, sock_dir: Path) -> None:
    transport = make_transport(f"unix:{sock_dir / 'nope.sock'}")
    with pytest.raises(UpstreamConnectError) as info:
        await get(transport)
    assert info.value.sent is False


async def test_read_timeout(server: RawServer, make_transport: MakeTransport) -> None:
    never = asyncio.Event()

    async def handler(req: Received, conn: Conn) -> None:
        await never.wait()

    server.handler = handler
    transport = make_transport(server.url, read_timeout=0.2)
    with pytest.raises(UpstreamTimeout) as info:
        await get(transport)
    assert info.value.sent


async def test_read_timeout_mid_body(server: RawServer, make_transport: MakeTransport) -> None:
    never = asyncio.Event()

    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await never.wait()

    server.handler = handler
    transport = make_transport(server.url, read_timeout=0.2)
    resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    with pytest.raises(UpstreamTimeout):
        await body_of(resp)


async def test_pool_wait_times_out_unsent(server: RawServer, make_transport: MakeTransport) -> None:
    """With every connection busy, a request waits at most ``connect_timeout``
    for one, and is then refused as never sent."""
    release = asyncio.Event()

    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        await release.wait()
        await conn.write(b"ok")

    server.handler = handler
    transport = make_transport(server.url, max_connections=1, connect_timeout=0.2)
    first = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    with pytest.raises(UpstreamTimeout) as info:
        await transport.send(UpstreamRequest("POST", "/", [(b"host", b"up")], b"x"))
    assert info.value.sent is False
    release.set()
    assert await body_of(first) == b"ok"
    assert server.count("POST") == 0


# --- pooling --------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(server: RawServer, transport: Transport) -> None:
    for _ in range(10):
        assert await get(transport) == (200, b"hello")
    assert server.connections == 1


async def test_a_complete_body_is_taken_at_once_or_read_as_usual(
    server: RawServer, transport: Transport
) -> None:
    """body_if_complete: the whole body when it is all in, else None and
    aiter_body gives it (an answer still arriving).  Either way the same
    bytes, and the connection is reused."""
    for _ in range(3):
        resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
        await asyncio.sleep(0.05)  # all of "hello" is in by now
        body = resp.body_if_complete()
        assert body == b"hello"
        assert [c async for c in resp.aiter_body()] == []  # taken: nothing left
        await resp.aclose()
    assert server.connections == 1

    gate = asyncio.Event()

    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await gate.wait()
        await conn.write(b"world")

    server.handler = handler
    resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    await asyncio.sleep(0.05)
    assert resp.body_if_complete() is None  # half of it: read it as usual
    gate.set()
    assert await body_of(resp) == b"helloworld"


async def test_pool_bounded(server: RawServer, make_transport: MakeTransport) -> None:
    gate = asyncio.Event()
    inflight = 0
    peak = 0

    async def handler(req: Received, conn: Conn) -> None:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0)
        if peak >= 4:
            gate.set()
        await asyncio.wait_for(gate.wait(), 5)
        inflight -= 1
        await conn.respond(200, b"ok")

    server.handler = handler
    transport = make_transport(server.url, max_connections=4)
    results = await asyncio.gather(*(get(transport) for _ in range(20)))
    assert results == [(200, b"ok")] * 20
    assert peak == 4
    assert server.connections == 4


async def test_unread_body_not_reused(server: RawServer, transport: Transport) -> None:
    # Larger than what socket buffers and the client's read-ahead hold
    # (a UNIX socket takes a few hundred KiB at once).
    body = b"x" * (8 * MB)

    async def handler(req: Received, conn: Conn) -> None:
        await conn.respond(200, body)

    server.handler = handler
    resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    await resp.aclose()  # abandoned: the rest of the body is still on that socket
    assert await get(transport) == (200, body)
    assert server.connections == 2


async def test_unix_socket_upstream(make_transport: MakeTransport, sock_dir: Path) -> None:
    srv = RawServer()
    url = await srv.start(uds=str(sock_dir / "slurmrestd.sock"))
    try:
        transport = make_transport(url)
        for _ in range(3):
            assert await get(transport, "/slurm/v0.0.38/ping?x=%20") == (200, b"hello")
        assert srv.connections == 1
        assert srv.received[0].target == b"/slurm/v0.0.38/ping?x=%20"
        # With no Host given, one is supplied (HTTP/1.1 requires it).
        resp = await transport.send(UpstreamRequest("GET", "/", []))
        await body_of(resp)
        assert srv.received[-1].header(b"host") == b"localhost"
    finally:
        await srv.stop()


# --- streaming, both ways, with flat memory --------------------------------------------


BIG = 100 * MB
PIECE = 256 * 1024


async def test_100mb_response_streams_with_flat_memory(
    server: RawServer, transport: Transport
) -> None:
    piece = bytes(range(256)) * (PIECE // 256)

    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        for _ in range(BIG // PIECE):
            await conn.write(piece)

    server.handler = handler
    expected = hashlib.sha256()
    for _ in range(BIG // PIECE):
        expected.update(piece)
    tracemalloc.start()
    try:
        resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
        digest = hashlib.sha256()
        size = 0
        async for chunk in resp.aiter_body():
            digest.update(chunk)
            size += len(chunk)
        await resp.aclose()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == BIG
    assert digest.hexdigest() == expected.hexdigest()
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MiB while streaming 100 MiB"


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_100mb_request_streams_with_flat_memory(
    server: RawServer, transport: Transport, with_length: bool
) -> None:
    piece = bytes(range(256)) * (PIECE // 256)
    expected = hashlib.sha256()
    for _ in range(BIG // PIECE):
        expected.update(piece)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(BIG // PIECE):
            yield piece

    async def handler(req: Received, conn: Conn) -> None:
        await conn.respond(201, b"stored")

    server.handler = handler
    headers = [(b"host", b"up")]
    if with_length:
        headers.append((b"content-length", b"%d" % BIG))
    tracemalloc.start()
    try:
        resp = await transport.send(UpstreamRequest("POST", "/upload", headers, chunks()))
        assert await body_of(resp) == b"stored"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (got,) = server.received
    assert got.body_len == BIG
    assert got.body_sha256 == expected.hexdigest()
    if not with_length:
        assert got.header(b"transfer-encoding") == b"chunked"
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MiB while streaming 100 MiB"


# --- more edges ------------------------------------------------------------------------


async def test_non_ascii_bytes_pass_unchanged(server: RawServer, transport: Transport) -> None:
    """Targets and header values are bytes on the wire; whatever the client
    sent reaches slurmrestd unchanged."""
    raw = b"j\xc3\xb6rg"
    target = (b"/slurm/v0.0.38/user/" + raw + b"?x=" + raw).decode("latin-1")
    headers = [(b"host", b"up"), (b"x-slurm-user-name", raw)]
    resp = await transport.send(UpstreamRequest("GET", target, headers))
    await body_of(resp)
    (got,) = server.received
    assert got.target == target.encode("latin-1")
    assert [(k.lower(), v) for k, v in got.headers] == headers


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/slurm/v0.0.38/user/caf\xe9", [(b"host", b"up")]),
        ("/x", [(b"host", b"up"), (b"x-slurm-user-name", b"caf\xe9")]),
    ],
    ids=["target", "header"],
)
async def test_bytes_that_cannot_pass_unchanged_are_refused_unsent(
    server: RawServer, transport: Transport, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """Bytes that are not UTF-8 cannot go through aiohttp unchanged; sending
    other bytes would let slurmrestd act on another request than the one the
    proxy decided on (another user name): refused, nothing sent."""
    with pytest.raises(UpstreamRefused) as info:
        await transport.send(UpstreamRequest("GET", target, headers))
    assert info.value.sent is False
    assert server.received == []


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/x HTTP/1.1\r\nx-evil: 1\r\n\r\nGET /y", [(b"host", b"up")]),
        ("/x", [(b"host", b"up"), (b"x-a", b"1\r\nx-evil: 1")]),
        ("/x", [(b"host", b"up"), (b"x-a\nx-evil", b"1")]),
    ],
)
async def test_request_smuggling_refused(
    server: RawServer, transport: Transport, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - both clients raise a plain ValueError
        await transport.send(UpstreamRequest("GET", target, headers))
    assert server.received == []


async def test_informational_response_skipped(server: RawServer, transport: Transport) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await conn.respond(201, b"done")

    server.handler = handler
    resp = await transport.send(UpstreamRequest("POST", "/", [(b"host", b"up")], b"x"))
    assert resp.status == 201
    assert await body_of(resp) == b"done"


async def test_one_connection_serves_queued_requests(
    server: RawServer, make_transport: MakeTransport
) -> None:
    transport = make_transport(server.url, max_connections=1)
    results = await asyncio.gather(*(get(transport, f"/{i}") for i in range(10)))
    assert results == [(200, b"hello")] * 10
    assert server.connections == 1


async def test_cancelled_request_frees_its_connection(
    server: RawServer, make_transport: MakeTransport
) -> None:
    """A client that goes away cancels the forwarding task: the pool slot must
    come back, and the half-used connection must not be reused."""

    async def handler(req: Received, conn: Conn) -> None:
        if req.target == b"/hang":
            await asyncio.Event().wait()
        await conn.respond(200, b"ok")

    server.handler = handler
    transport = make_transport(server.url, max_connections=1)
    task = asyncio.create_task(get(transport, "/hang"))
    await server.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await get(transport, "/ok") == (200, b"ok")
    assert server.connections == 2


async def test_cancelled_pool_wait_does_not_leak(
    server: RawServer, make_transport: MakeTransport
) -> None:
    release = asyncio.Event()

    async def handler(req: Received, conn: Conn) -> None:
        if req.target == b"/slow":
            await release.wait()
        await conn.respond(200, b"ok")

    server.handler = handler
    transport = make_transport(server.url, max_connections=1)
    slow = asyncio.create_task(get(transport, "/slow"))
    await server.wait_for_requests(1)
    waiting = asyncio.create_task(get(transport, "/queued"))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await slow == (200, b"ok")
    assert await get(transport, "/after") == (200, b"ok")
    assert [r.target for r in server.received] == [b"/slow", b"/after"]


async def test_partially_read_body_frees_slot(
    server: RawServer, make_transport: MakeTransport
) -> None:
    async def handler(req: Received, conn: Conn) -> None:
        await conn.respond(200, b"y" * 3_000_000)

    server.handler = handler
    transport = make_transport(server.url, max_connections=1)
    resp = await transport.send(UpstreamRequest("GET", "/", [(b"host", b"up")]))
    async for _ in resp.aiter_body():
        break
    await resp.aclose()
    status, body = await get(transport)
    assert (status, len(body)) == (200, 3_000_000)


async def test_interleaved_bodies_arrive_intact(server: RawServer, transport: Transport) -> None:
    """Answers read in turns on several connections, in pieces larger and
    smaller than a read buffer, each arrive byte for byte."""
    size = 700 * 1024

    def body_for(path: str) -> bytes:
        seed = path.encode()
        return (seed * (size // len(seed) + 1))[:size]

    async def handler(req: Received, conn: Conn) -> None:
        body = body_for(req.target.decode())
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for start in range(0, size, 90_001):
            await conn.write(body[start : start + 90_001])
            await asyncio.sleep(0.001)

    server.handler = handler
    paths = [f"/{n}/{chr(97 + n) * (n + 1)}" for n in range(6)]
    for _ in range(2):  # the second round reuses the pooled connections
        got = await asyncio.gather(*(get(transport, p) for p in paths))
        assert got == [(200, body_for(p)) for p in paths]


async def test_connection_closed_while_idle_is_not_reused(
    server: RawServer, transport: Transport
) -> None:
    """slurmrestd (or anything between) closing an idle keep-alive connection
    is noticed before the next request, so even a write goes out safely."""

    async def handler(req: Received, conn: Conn) -> None:
        await conn.respond(200, b"ok")
        if req.method == "GET":
            conn.close()  # no Connection: close header: an idle-timeout close

    server.handler = handler
    assert await get(transport) == (200, b"ok")
    await server.wait_for_closed(1)
    for _ in range(10):  # let the loop deliver the FIN to the pooled connection
        await asyncio.sleep(0)
    resp = await transport.send(UpstreamRequest("POST", "/job/submit", [(b"host", b"up")], b"{}"))
    assert await body_of(resp) == b"ok"
    assert server.count("POST") == 1
    assert server.connections == 2
