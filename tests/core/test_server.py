"""The server protocol (cacheproxy.http.server, cycle.py) on real sockets:
what uvicorn's own protocol did before the proxy owned it (HTTP/1.1
framing, pipelining, HEAD, 100-continue, Connection: close, HTTP/1.0,
disconnects, shutdown), for the pipeline and for any ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import pytest
import uvicorn

from cacheproxy.http import server as http_server
from cacheproxy.http.pipeline import Continue, Exchange, Pipeline
from cacheproxy.http.respond import Receive, Response, Send
from tests.core.servers import serve


class Reply(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class Client:
    """One connection sending exact bytes and reading responses as framed
    on the wire (Content-Length, chunked, or none for HEAD)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw[:-4].split(b"\r\n")
        headers = [(k.lower(), v) for k, _, v in (line.partition(b": ") for line in lines[1:])]
        return int(lines[0].split(b" ")[1]), headers

    async def reply(self, *, head_only: bool = False) -> Reply:
        status, headers = await self.head()
        found = dict(headers)
        if head_only or status in (100, 204, 304):
            return Reply(status, headers, b"")
        if found.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            assert await self.reader.readexactly(2) == b"\r\n"
            return Reply(status, headers, body)
        length = int(found.get(b"content-length", b"0"))
        return Reply(status, headers, await self.reader.readexactly(length))

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""


Connect = Callable[[str], Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    opened: list[asyncio.StreamWriter] = []

    async def open_one(url: str) -> Client:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        opened.append(writer)
        return Client(reader, writer)

    yield open_one
    for writer in opened:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def get(path: str, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def whole(body: bytes, status: int = 200) -> Response:
    return status, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))], body


class Handler:
    """The pipeline's handler for these tests: ``/fast/...`` answered whole
    at once, ``/slow/<ms>`` after awaiting, ``/echo`` reads the body (a
    :class:`Continue`), ``/stream`` streams without a length."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.disconnected = asyncio.Event()

    def respond(self, ex: Exchange) -> Any:
        path: str = ex.scope["path"]
        if path.startswith("/slow/"):
            return self._slow(int(path.rsplit("/", 1)[1]) / 1000, path)
        if path == "/echo":
            return Continue(self._echo)
        if path == "/stream":
            return Continue(self._stream)
        if path == "/wait-disconnect":
            return Continue(self._wait_disconnect)
        return whole(path.encode())

    async def _slow(self, seconds: float, path: str) -> Response:
        await asyncio.sleep(seconds)
        return whole(path.encode())

    async def _echo(self, receive: Receive, send: Send) -> None:
        body, messages = b"", 0
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message["body"]
            messages += 1
            if not message["more_body"]:
                break
        self.bodies.append(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b""):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"three"})

    async def _wait_disconnect(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        raise AssertionError("no lifespan here")


@pytest.fixture
async def handler() -> Handler:
    return Handler()


@pytest.fixture
async def url(handler: Handler) -> AsyncIterator[str]:
    async with serve(Pipeline([], handler), lifespan="off") as u:
        yield u


async def test_pipelined_requests_are_answered_in_order(url: str, connect: Connect) -> None:
    """Whole answers at once, answers after awaiting (slower first), a body
    read and a stream, all sent at once: answered in the order asked."""
    c = await connect(url)
    body = b'{"a": 1}'
    await c.send(
        get("/slow/200")
        + get("/fast/1")
        + get("/slow/10")
        + get("/echo", b"Content-Length: %d\r\n" % len(body)) + body
        + get("/stream")
        + get("/fast/2")
    )  # fmt: skip
    replies = [await c.reply() for _ in range(6)]
    expected = [b"/slow/200", b"/fast/1", b"/slow/10", body, b"one,two,three", b"/fast/2"]
    assert [r.body for r in replies] == expected
    assert all(r.status == 200 for r in replies)


async def test_hundreds_of_pipelined_hits_behind_a_slow_one(url: str, connect: Connect) -> None:
    """Answered in a loop when the slow one completes, not by recursion."""
    c = await connect(url)
    await c.send(get("/slow/100") + b"".join(get(f"/fast/{i}") for i in range(1500)))
    assert (await c.reply()).body == b"/slow/100"
    for i in range(1500):
        assert (await c.reply()).body == f"/fast/{i}".encode()


async def test_a_chunked_request_body_reaches_the_application_whole(
    url: str, handler: Handler, connect: Connect
) -> None:
    c = await connect(url)
    await c.send(get("/echo", b"Transfer-Encoding: chunked\r\n"))
    for part in (b"4\r\nwiki\r\n", b"5\r\npedia\r\n", b"0\r\n\r\n"):
        await asyncio.sleep(0.02)
        await c.send(part)
    r = await c.reply()
    assert r.body == b"wikipedia"
    assert handler.bodies == [b"wikipedia"]
    await c.send(get("/fast/after"))  # the connection goes on
    assert (await c.reply()).body == b"/fast/after"


async def test_a_response_without_length_is_chunked(url: str, connect: Connect) -> None:
    c = await connect(url)
    await c.send(get("/stream"))
    r = await c.reply()
    assert r.header(b"transfer-encoding") == b"chunked"
    assert r.body == b"one,two,three"


@pytest.mark.parametrize("path", ["/fast/x", "/slow/1", "/stream"])
async def test_head_has_the_head_and_no_body(url: str, path: str, connect: Connect) -> None:
    c = await connect(url)
    await c.send(get(path, method=b"HEAD") + get("/fast/next"))
    status, headers = await c.head()
    assert status == 200
    assert (b"transfer-encoding", b"chunked") not in headers
    if path != "/stream":
        assert (b"content-length", b"%d" % len(path)) in headers
    assert (await c.reply()).body == b"/fast/next"  # nothing in between


async def test_expect_100_continue_is_answered_when_the_body_is_read(
    url: str, handler: Handler, connect: Connect
) -> None:
    c = await connect(url)
    await c.send(get("/echo", b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
    interim = await c.head()
    assert interim == (100, [])
    await c.send(b"hello")
    r = await c.reply()
    assert r.body == b"hello"
    await c.send(get("/fast/after"))
    assert (await c.reply()).body == b"/fast/after"


async def test_a_final_answer_without_the_expected_body_closes(url: str, connect: Connect) -> None:
    """Answered without asking for the body: the bytes that follow could
    be it or a next request, so the connection closes."""
    c = await connect(url)
    await c.send(get("/fast/no-body-read", b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
    r = await c.reply()
    assert r.status == 200
    assert r.header(b"connection") == b"close"
    assert await c.closed()


@pytest.mark.parametrize("path", ["/fast/x", "/slow/1", "/stream"])
@pytest.mark.parametrize(
    "framing",
    [b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET %s HTTP/1.0\r\n\r\n"],
    ids=["connection-close", "http-1.0"],
)
async def test_a_closing_request_is_answered_then_closed(
    url: str, path: str, framing: bytes, connect: Connect
) -> None:
    c = await connect(url)
    await c.send(framing % path.encode() + get("/fast/never"))  # nothing after is read
    r = await c.reply()
    assert r.status == 200
    assert r.body == path.encode() if path != "/stream" else b"one,two,three"
    assert r.header(b"connection") == b"close"
    assert await c.closed()


async def test_a_client_gone_mid_response_gets_http_disconnect(
    url: str, handler: Handler, connect: Connect
) -> None:
    c = await connect(url)
    await c.send(get("/wait-disconnect"))
    status, _ = await c.head()
    assert status == 200
    c.writer.transport.abort()
    await asyncio.wait_for(handler.disconnected.wait(), 5)


async def test_a_malformed_request_behind_a_slow_one_is_answered_in_its_turn(
    url: str, connect: Connect
) -> None:
    c = await connect(url)
    await c.send(get("/slow/100") + b"NOT HTTP\r\n\r\n")
    first = await c.reply()
    assert first.body == b"/slow/100"  # not the 400: that one is the second's
    second = await c.reply()
    assert second.status == 400
    assert json.loads(second.body)["errors"][0]["source"] == "cacheproxy"
    assert await c.closed()


async def test_an_upgrade_is_answered_as_a_plain_request(url: str, connect: Connect) -> None:
    c = await connect(url)
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
    await c.send(get("/fast/up", upgrade) + get("/fast/after"))
    assert (await c.reply()).body == b"/fast/up"
    assert (await c.reply()).body == b"/fast/after"
    # with a body llhttp would not parse: refused, and nothing after is read
    d = await connect(url)
    smuggled = get("/fast/smuggled")
    await d.send(get("/echo", upgrade + b"Content-Length: %d\r\n" % len(smuggled)) + smuggled)
    r = await d.reply()
    assert r.status == 400
    assert await d.closed()


async def test_any_asgi_application_is_served(connect: Connect) -> None:
    """Not the pipeline (the simulator, a test's fake): every request runs
    in its ASGI cycle; an application failing before its answer gets 500."""
    seen: list[str] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        if scope["path"] == "/fail":
            raise RuntimeError("boom")
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body or b"empty"})

    async with serve(app, lifespan="off") as u:
        c = await connect(u)
        await c.send(get("/a") + get("/b", b"Content-Length: 3\r\n") + b"xyz")
        assert [(await c.reply()).body for _ in range(2)] == [b"empty", b"xyz"]
        await c.send(get("/fail"))
        r = await c.reply()
        assert r.status == 500
        assert r.header(b"connection") == b"close"
        assert await c.closed()
    assert seen == ["/a", "/b", "/fail"]


async def test_shutdown_answers_the_requests_already_parsed_then_closes(
    handler: Handler, connect: Connect
) -> None:
    config = uvicorn.Config(
        Pipeline([], handler), host="127.0.0.1", port=0, loop="none", lifespan="off",
        log_level="warning", http=http_server.protocol(), proxy_headers=False,
        date_header=False, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    c = await connect(f"http://127.0.0.1:{port}")
    idle = await connect(f"http://127.0.0.1:{port}")
    await c.send(get("/slow/400") + get("/fast/queued"))
    await asyncio.sleep(0.1)
    server.should_exit = True
    first = await c.reply()
    last = await c.reply()
    await asyncio.wait_for(task, 10)
    assert first.body == b"/slow/400"
    assert first.header(b"connection") is None
    assert last.body == b"/fast/queued"
    assert last.header(b"connection") == b"close"
    assert await c.closed()
    assert await idle.closed()


async def test_forwarded_headers_are_believed_from_trusted_peers_only(
    connect: Connect,
) -> None:
    clients: list[tuple[Any, str]] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        clients.append((scope["client"], scope["scheme"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    forwarded = b"X-Forwarded-For: 203.0.113.9, 10.0.0.2\r\nX-Forwarded-Proto: https\r\n"
    for trusted in ((), ("127.0.0.1",), ("127.0.0.0/8", "10.0.0.0/8"), ("*",)):
        options = http_server.ServerOptions(forwarded_allow_ips=trusted)
        async with serve(app, lifespan="off", http=http_server.protocol(options)) as u:
            c = await connect(u)
            await c.send(get("/", forwarded))
            assert (await c.reply()).status == 204
    hosts = [(client[0], scheme) for client, scheme in clients]
    assert hosts == [
        ("127.0.0.1", "http"),  # nobody trusted
        ("10.0.0.2", "https"),  # the balancer trusted: the hop it saw
        ("203.0.113.9", "https"),  # both hops are trusted proxies: the client before them
        ("203.0.113.9", "https"),  # everyone trusted: the left-most
    ]
