"""The HTTP/1.1 server protocol ``cacheproxy serve`` runs under uvicorn.

A connection: bytes in, parsed by httptools' ``HttpRequestParser`` (llhttp,
its public callback API); for each request head, the request pipeline
(:mod:`cacheproxy.http.pipeline`) runs at once.  Its answer is written the
cheapest way that is still the same bytes:

* a whole response the pipeline completed without awaiting (a fresh hit from
  the in-process store, a refusal) is written right away, from the parser
  callback, with no task and no ASGI message;
* one it completed after awaiting with no stream to carry (a Redis-tier hit,
  a small forwarded GET) is written the same way from the task that awaited;
* anything else (a request body to read, a response to stream) runs in the
  request's ASGI cycle (:mod:`cacheproxy.http.cycle`), as does any
  application that is not the pipeline (the simulator, a test's fake).

Requests pipelined on a connection are answered in order: one is answered at
a time, the others wait (reading paused) and start as the previous response
completes.  Limits on the head, which llhttp does not bound: a target over
``max_url_bytes`` is answered 414, a head over ``max_head_bytes`` 431, a head
not complete ``head_timeout`` seconds after the connection opened or the
previous response ended 408 (a silent close if not a byte came, like
uvicorn's keep-alive expiry, which is kept: an idle connection closes
``timeout_keep_alive`` seconds after its last response).  One timer per
connection serves both deadlines (:mod:`cacheproxy.http.deadlines`).
Over uvicorn's ``limit_concurrency`` a request is answered 503 with
``Retry-After``, and a request llhttp cannot parse 400, each in
slurmrestd's JSON error shape and in its turn, and the connection closes.
A request asking to switch protocols (``Upgrade``, ``CONNECT``) is answered
as a plain request (slurmrestd has no other protocol), or 400 when it
carries a body (llhttp would not parse it).  ``X-Forwarded-For``/``-Proto``
are believed from the configured balancers only (:mod:`cacheproxy.http.forwarded`).

The one contract with uvicorn (beyond its documented settings) is how it
runs an ``http=`` protocol: it calls the class or factory given with the
keywords ``config`` (a ``uvicorn.Config``; its ``loaded_app`` is the
application, its ``timeout_keep_alive``, ``limit_concurrency``,
``root_path`` and ``asgi_version`` are read), ``server_state``, ``app_state``
(the lifespan's state) and ``_loop``; the protocol adds itself to
``server_state.connections`` and its tasks to ``server_state.tasks``, which
uvicorn counts for ``limit_concurrency`` and waits on at shutdown, after it
called each connection's ``shutdown()``; ``server_state.default_headers``
holds the ``Date`` and ``Server`` headers uvicorn's settings ask for, and
``server_state.total_requests`` counts responses for ``limit_max_requests``.
``tests/core/test_dependencies.py`` fails if any of that changes, and
``pyproject.toml`` bounds uvicorn for it.  uvicorn's own access log, its
proxy-headers middleware (``proxy_headers`` must be off: this protocol
rewrites the client itself), WebSockets and HTTP/2 do not apply here.

Settings of one server (the limits, the trusted balancers) are bound to the
factory :func:`protocol` returns, which uvicorn also hands to ``--workers``
children (it pickles its configuration).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools

from cacheproxy.core import errors
from cacheproxy.http.cycle import STATUS_LINES, Cycle, status_lines
from cacheproxy.http.deadlines import NEVER as _NEVER
from cacheproxy.http.deadlines import Deadlines
from cacheproxy.http.forwarded import TrustedProxies
from cacheproxy.http.pipeline import Answer, Continue, Exchange, Pipeline
from cacheproxy.http.respond import Response

log = logging.getLogger("cacheproxy")


@dataclass(frozen=True)
class ServerOptions:
    """The settings of one server that uvicorn does not have."""

    max_url_bytes: int = 8192
    max_head_bytes: int = 32 * 1024
    head_timeout: float = 10.0
    """Seconds; 0: no limit."""
    forwarded_allow_ips: tuple[str, ...] = ()
    """The balancers whose ``X-Forwarded-For``/``-Proto`` are believed."""
    reason_phrases: tuple[tuple[int, str], ...] = ()
    """Status codes whose reason phrase is not the standard one (the
    simulator writes slurmrestd's, e.g. ``304 NOT MODIFIED``)."""


def protocol(options: ServerOptions | None = None) -> Callable[..., HttpServer]:
    """What uvicorn's ``http=`` setting takes: it makes one
    :class:`HttpServer` per connection, with ``options``."""
    return functools.partial(HttpServer, options=options or ServerOptions())


def raw_error(err: errors.ProxyError, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A whole response in slurmrestd's error shape that closes the connection."""
    _, headers, body = errors.error_response(err, [(b"connection", b"close"), *(extra or ())])
    head = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return STATUS_LINES[err.status] + head + b"\r\n" + body


class _HeadLimit(Exception):
    """Raised in a parser callback to stop parsing an oversized head."""


class HttpServer(Deadlines, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        options: ServerOptions,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.pipeline = self.app if isinstance(self.app, Pipeline) else None
        self.loop = _loop or asyncio.get_running_loop()
        self.state = server_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.app_state = app_state
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self.root_path: str = config.root_path
        self.keep_alive_timeout: float = config.timeout_keep_alive
        self.limit: int | None = config.limit_concurrency
        self.status_lines: Mapping[int, bytes] = _status_lines_of(options.reason_phrases)
        self.max_url = options.max_url_bytes
        self.max_head = options.max_head_bytes
        self.trusted = (
            TrustedProxies(options.forwarded_allow_ips) if options.forwarded_allow_ips else None
        )
        self.parser = httptools.HttpRequestParser(self)
        # Bytes after a request that closes the connection are dropped, not a 400.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.active: Cycle | None = None
        """The request being answered."""
        self.waiting: deque[Cycle] = deque()
        """Requests parsed behind it (pipelined), answered in order."""
        self.receiving: Cycle | None = None
        """The request whose body the parser delivers."""
        self.last = False
        """A request that ends the connection was parsed: nothing after it is."""
        self.starting = False
        self.read_paused = False
        self.write_paused = False
        self.writable: asyncio.Event | None = None
        # the head being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.in_head = False
        self.expect = False
        self.refusal: errors.ProxyError | None = None
        self.head_timeout = options.head_timeout
        self.init_deadlines()

    # -- the connection -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)
        # (uvloop's transports have asyncio.Transport's methods, not its class)
        self.transport = transport = cast(asyncio.Transport, transport)
        self.server = _address(transport, "sockname")
        self.client = _address(transport, "peername")  # type: ignore[assignment]
        if transport.get_extra_info("sslcontext"):
            self.scheme = "https"
        self.arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.stop_timer()
        if self.active is not None:
            self.active.lost()
        self.resume_writing()  # nobody waits to write any more

    def head_timed_out(self) -> None:
        self.transport.write(raw_error(errors.HEAD_TIMEOUT))
        self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: the transport closes (as uvicorn)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()
            self.writable = None

    async def drain(self) -> None:
        """Wait until the transport takes writes again."""
        if self.write_paused:
            if self.writable is None:
                self.writable = asyncio.Event()
            await self.writable.wait()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.state.default_headers  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: answer what was parsed, then close."""
        self.last = True
        if self.active is None:
            self.transport.close()
            return
        (self.waiting[-1] if self.waiting else self.active).keep_alive = False

    def data_received(self, data: bytes) -> None:
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # Not switched: what follows the head is HTTP/1.1 again.
                data = data[upgrade.args[0] :]
                if not data or self.last:
                    return
            except httptools.HttpParserError as exc:
                self._malformed(exc)
                return

    def _malformed(self, exc: Exception) -> None:
        refusal, self.refusal = self.refusal, None
        if refusal is None:
            log.info("malformed request from %s: %s", self.client, exc)
            refusal = errors.bad_request("the request is not valid HTTP/1.1")
        self.pause_reading()
        raw = raw_error(refusal)
        active = self.active
        if active is not None and active is self.receiving and active.more_body:
            # The body of the request being answered is broken: it ends here,
            # and the application finds its client gone (nothing half-read
            # is acted on).
            if not active.started:
                self.transport.write(raw)
            self.transport.close()
            active.lost()
            return
        self._refuse(raw)

    def _refuse(self, raw: bytes) -> None:
        """Answer with ``raw`` in this request's turn, then close."""
        self.last = True
        cycle = Cycle(self, {}, False, False)
        cycle.refusal = raw
        if self.active is None:
            self._start(cycle)
        else:
            self.waiting.append(cycle)

    # -- parser callbacks (llhttp calls them from feed_data) ----------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.in_head = True
        self.expect = False
        self.idle_deadline = _NEVER
        if self.head_deadline == _NEVER:
            self.arm_head_deadline()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_url:
            self.refusal = errors.URL_TOO_LONG
            raise _HeadLimit
        self.head_bytes += len(url)
        if self.head_bytes > self.max_head:
            self.refusal = errors.HEAD_TOO_LARGE
            raise _HeadLimit

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.max_head:
            self.refusal = errors.HEAD_TOO_LARGE
            raise _HeadLimit
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5 does not)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_deadline = _NEVER  # the head is in: stop its clock
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root = self.root_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": self.asgi,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": root,
            "path": root + path if root else path,
            "raw_path": root.encode() + raw_path if root else raw_path,
            "query_string": url.query or b"",
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        if self.trusted is not None:
            self.trusted.rewrite(scope)
        # HTTP/1.0 closes, even with Connection: keep-alive (as uvicorn).
        keep_alive = version != "1.0" and parser.should_keep_alive()
        expect = self.expect and _has_body(self.headers)
        cycle = self.receiving = Cycle(self, scope, keep_alive, expect)
        if self.last:  # after a request that closes the connection: dropped
            cycle.complete = True
            return
        if not keep_alive:
            self.last = True
        if parser.should_upgrade() and _has_body(self.headers):
            cycle.refusal = raw_error(errors.bad_request("a body with a protocol upgrade"))
            self.last = True
        elif self.limit is not None and (
            len(self.connections) >= self.limit or len(self.tasks) >= self.limit
        ):
            log.warning("over the concurrency limit: 503")
            cycle.refusal = raw_error(errors.TOO_MANY_CONNECTIONS, [(b"retry-after", b"1")])
        if self.active is None:
            self._start(cycle)
        else:
            self.waiting.append(cycle)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.feed(body)

    def on_message_complete(self) -> None:
        if self.receiving is not None:
            self.receiving.end()

    # -- answering ------------------------------------------------------------------
    def _start(self, cycle: Cycle) -> None:
        self.active = cycle
        if cycle.refusal is not None:
            self.transport.write(cycle.refusal)
            self.transport.close()
            cycle.started = cycle.complete = True
            self.response_done(cycle)
            return
        pipeline = self.pipeline
        if pipeline is None:
            scope, app = cycle.scope, self.app
            self._spawn(cycle.run(lambda receive, send: app(scope, receive, send)))
            return
        ex = Exchange()  # (Exchange.of, inlined: the hit path)
        ex.scope = cycle.scope
        answer = pipeline.run(ex)
        if type(answer) is tuple:
            self._answer(cycle, ex, answer)
        elif isinstance(answer, Continue):
            self._spawn(cycle.run(answer.run))
        else:
            self._spawn(self._answer_later(cycle, ex, answer))  # type: ignore[arg-type]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # counted for limit_concurrency, awaited at shutdown

    def _answer(self, cycle: Cycle, ex: Exchange, response: Response) -> None:
        """A whole response, written at once unless writes are paused."""
        if self.transport.is_closing():
            self._count(ex)  # answered, for a client gone (as the ASGI path would)
            return
        if self.write_paused:
            self._spawn(self._answer_later(cycle, ex, _ready(response)))
            return
        if cycle.write_whole(response):
            self._count(ex)
        else:  # framed by ASGI's send (chunked)
            self._spawn(cycle.run(lambda receive, send: cycle.send_whole(response)))

    async def _answer_later(self, cycle: Cycle, ex: Exchange, pending: Awaitable[Answer]) -> None:
        """An answer that awaited something (the store, upstream, a step).
        Until it is written the request is in progress, so the requests
        pipelined behind it wait."""
        answer = await pending  # (the pipeline's safety net: it does not raise)
        if isinstance(answer, Continue):
            # Even for a client that left meanwhile: what it holds (an
            # upstream answer) is released there, and the cycle knows the
            # client is gone.
            await cycle.run(answer.run)
            return
        if self.write_paused and not cycle.disconnected:
            await self.drain()
        if cycle.disconnected:
            self._count(ex)
            return
        self._answer(cycle, ex, answer)

    def _count(self, ex: Exchange) -> None:
        """A hit or a forward answered without an ASGI cycle."""
        stats = self.pipeline.stats  # type: ignore[union-attr]
        if ex.lane == "hit":
            stats.fast_hits += 1
        elif ex.lane == "forward":
            stats.fast_forwards += 1

    def response_done(self, cycle: Cycle) -> None:
        """The active request's response is complete: the next one's turn."""
        self.state.total_requests += 1
        self.active = None
        transport = self.transport
        if transport.is_closing():
            return
        now = self.loop.time()
        if self.head_timeout > 0:
            self.head_deadline = now + self.head_timeout
        if self.starting:
            return  # (the loop below goes on)
        if self.waiting:
            self.starting = True
            try:  # a loop, not a recursion: a client may pipeline hundreds of hits
                while self.waiting and self.active is None and not transport.is_closing():
                    self._start(self.waiting.popleft())
            finally:
                self.starting = False
            if self.active is not None or transport.is_closing():
                self.ensure_timer()
                return
        if self.read_paused:
            self.resume_reading()
        self.idle_deadline = now + self.keep_alive_timeout
        self.ensure_timer()


@functools.lru_cache(maxsize=4)
def _status_lines_of(phrases: tuple[tuple[int, str], ...]) -> dict[int, bytes]:
    """One table per set of phrases (a pure function, remembered: built
    once, not per connection)."""
    return status_lines(dict(phrases)) if phrases else STATUS_LINES


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _address(transport: asyncio.Transport, which: str) -> tuple[str, int | None] | None:
    """The socket's own or its peer's (host, port); a unix socket's path
    with no port for its own, None for its peer."""
    sock: socket.socket | None = transport.get_extra_info("socket")
    try:
        info = (sock.getsockname() if which == "sockname" else sock.getpeername()) if sock else None
    except OSError:
        info = None
    if info is None:
        info = transport.get_extra_info(which)
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return str(info[0]), int(info[1])
    if isinstance(info, str) and info and which == "sockname":
        return info, None
    return None


async def _ready(response: Response) -> Response:
    return response
