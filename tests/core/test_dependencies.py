"""The library behaviour the code relies on beyond documented APIs.

Each bound in ``pyproject.toml`` that names such a reliance has its test
here, so that a lock refresh (``scripts/update-deps.sh``) that brings a
version without it fails the test command instead of slowing or breaking a
site silently.

The server protocol (:mod:`cacheproxy.http.server`) relies on one contract
with uvicorn: how uvicorn makes an ``http=`` protocol and what it shares with
it.  These tests pin each part of it with the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import httptools
import uvicorn

from cacheproxy.http import server as http_server
from cacheproxy.http.server import HttpServer, ServerOptions


async def hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"hi"})


class Recorder:
    """A protocol factory that records how uvicorn calls it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.made: list[HttpServer] = []

    def __call__(self, **kwargs: Any) -> HttpServer:
        self.calls.append(kwargs)
        made = HttpServer(**kwargs, options=ServerOptions())
        self.made.append(made)
        return made


async def test_uvicorn_makes_an_http_protocol_as_the_server_protocol_expects() -> None:
    recorder = Recorder()
    config = uvicorn.Config(
        hello, host="127.0.0.1", port=0, loop="none", lifespan="off", log_level="warning",
        http=recorder, proxy_headers=False, date_header=True, server_header=True,
        limit_concurrency=7, timeout_keep_alive=3, root_path="/r",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert await reader.readexactly(2) == b"hi"
        # the keywords, and nothing else
        assert [set(call) for call in recorder.calls] == [
            {"config", "server_state", "app_state", "_loop"}
        ]
        call = recorder.calls[0]
        assert call["config"] is config
        assert config.loaded_app is hello  # proxy_headers off: the app unwrapped
        assert (config.limit_concurrency, config.timeout_keep_alive) == (7, 3)
        assert (config.root_path, config.asgi_version) == ("/r", "3.0")
        state = call["server_state"]
        assert state is server.server_state
        assert recorder.made[0] in state.connections  # registered by the protocol
        assert isinstance(state.tasks, set)
        # uvicorn's default headers (Date, Server), which the protocol writes
        names = [name for name, _ in state.default_headers]
        assert names == [b"date", b"server"]
        assert b"\r\ndate: " in head
        assert b"\r\nserver: uvicorn" in head
        assert state.total_requests == 1  # counted by the protocol
        writer.close()
        await writer.wait_closed()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_uvicorn_calls_shutdown_and_waits_for_the_protocols_tasks() -> None:
    """Graceful shutdown: uvicorn calls ``shutdown()`` on each connection in
    ``server_state.connections`` and waits for ``server_state.tasks``."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await release.wait()
        await hello(scope, receive, send)

    config = uvicorn.Config(
        slow, host="127.0.0.1", port=0, loop="none", lifespan="off", log_level="warning",
        http=http_server.protocol(), proxy_headers=False, date_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await entered.wait()
    assert len(server.server_state.tasks) == 1
    server.should_exit = True
    await asyncio.sleep(0.3)
    assert not task.done()  # waiting for the request in flight
    release.set()
    data = await asyncio.wait_for(reader.read(), 5)  # the answer, then the close
    await asyncio.wait_for(task, 10)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nhi")
    writer.close()
    await writer.wait_closed()


def test_the_protocol_factory_survives_pickling_for_workers() -> None:
    """``--workers`` children get uvicorn's configuration pickled, the
    ``http=`` factory and its settings with it."""
    factory = http_server.protocol(ServerOptions(max_url_bytes=99, forwarded_allow_ips=("::1",)))
    again = pickle.loads(pickle.dumps(factory))
    assert again.func is HttpServer
    assert again.keywords == factory.keywords


def test_httptools_parser_has_the_leniency_the_protocol_sets() -> None:
    """Without it, bytes after a request that closes the connection are a
    parse error answered 400 before that request's own answer."""
    parser = httptools.HttpRequestParser(object())
    parser.set_dangerous_leniencies(lenient_data_after_close=True)
