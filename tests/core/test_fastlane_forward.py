"""GETs no rule caches, forwarded on the fast lane (cacheproxy.forward):
byte-for-byte what the ASGI path answers and sends upstream, and every answer
the lane must not give itself (an error status, a large body, an upstream
fault) relayed by the ASGI path, with nothing left holding a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import orjson
import pytest

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.upstream.protect import ProtectedTransport
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.core.servers import serve
from tests.core.test_fastlane import Connect, Response, connect, get, without_date

__all__ = ["connect"]  # the fixture, shared with test_fastlane

PING = "/slurm/v0.0.43/ping"
"""Never cached (default rules): forwarded every time."""
BIG = "/slurm/v0.0.43/big"
"""No rule here: forwarded, its size set by X-Size."""
DELTA = "/slurm/v0.0.43/jobs?update_time=1"
"""A client's own update_time never uses the cache: forwarded."""


class Recorder:
    """The fake slurmrestd, recording the headers of every request it gets."""

    def __init__(self, upstream: FakeSlurmrestd) -> None:
        self.upstream = upstream
        self.seen: list[list[tuple[bytes, bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append(list(scope["headers"]))
        await self.upstream(scope, receive, send)


class Stack(NamedTuple):
    upstream: FakeSlurmrestd
    recorder: Recorder
    app: CacheProxyApp
    fast: str
    plain: str


async def make_stack(**settings: Any) -> AsyncIterator[Stack]:
    upstream = FakeSlurmrestd()
    recorder = Recorder(upstream)
    async with serve(recorder) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url, **settings))
        await app.startup()
        hardened = hardening.wrap(app)
        try:
            async with (
                serve(hardened, lifespan="off", date_header=True) as fast,
                serve(hardened, lifespan="off", date_header=True, http="httptools") as plain,
            ):
                yield Stack(upstream, recorder, app, fast, plain)
        finally:
            await app.shutdown()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async for s in make_stack():
        yield s


async def both(stack: Stack, connect: Connect, request: bytes) -> tuple[Response, Response]:
    """``request`` on the lane's protocol, then on plain uvicorn."""
    fast, plain = await connect(stack.fast), await connect(stack.plain)
    await fast.send(request)
    a = await fast.response()
    await plain.send(request)
    b = await plain.response()
    return a, b


def in_use(app: CacheProxyApp) -> int:
    """Requests holding a slot to slurmrestd (each holds a connection)."""
    assert app.proxy is not None
    transport = app.proxy.transport
    assert isinstance(transport, ProtectedTransport)
    return transport.limiter.in_use


@pytest.mark.parametrize("path", [PING, DELTA, BIG])
async def test_an_uncached_get_is_forwarded_on_the_lane_byte_for_byte(
    stack: Stack, connect: Connect, path: str
) -> None:
    a, b = await both(stack, connect, get(path, extra=b"X-Size: 200000\r\n"))
    assert stack.app.stats.fast_forwards == 1  # only the first took the lane
    assert a.status == 200
    assert without_date(a) == without_date(b)
    assert a.header(b"cache-status") in (
        b"cacheproxy; fwd=bypass",
        b"cacheproxy; fwd=request",
        b"cacheproxy; fwd=uri-miss",
    )
    assert a.header(b"cache-status") == b.header(b"cache-status")
    assert a.header(b"x-request-id") == b"fixed-id"
    lane_sent, asgi_sent = stack.recorder.seen
    assert lane_sent == asgi_sent  # the same request upstream, header for header
    assert (b"x-request-id", b"fixed-id") in lane_sent
    assert sum(stack.app.stats.requests.values()) == 2
    assert in_use(stack.app) == 0


async def test_a_client_behind_a_load_balancer_is_forwarded_as_on_the_asgi_path(
    stack: Stack, connect: Connect
) -> None:
    """uvicorn trusts X-Forwarded-For/-Proto from 127.0.0.1 by default: the
    lane applies the same rewrite, so slurmrestd is told of the same client
    and scheme."""
    extra = b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
    a, b = await both(stack, connect, get(PING, extra=extra))
    assert stack.app.stats.fast_forwards == 1
    assert without_date(a) == without_date(b)
    lane_sent, asgi_sent = stack.recorder.seen
    assert lane_sent == asgi_sent
    sent = dict(lane_sent)
    assert sent[b"x-forwarded-proto"] == b"https"
    assert sent[b"x-forwarded-for"].startswith(b"203.0.113.7")
    assert b"127.0.0.1" not in sent[b"x-forwarded-for"]


@pytest.mark.parametrize(
    "ids", [b"", b"X-Request-ID: one\r\nX-Request-ID: two\r\n", b"X-Request-ID: no way\r\n"]
)
async def test_the_request_id_the_lane_makes_goes_upstream_and_back(
    stack: Stack, connect: Connect, ids: bytes
) -> None:
    c = await connect(stack.fast)
    request = (
        f"GET {PING} HTTP/1.1\r\nHost: proxy\r\nX-SLURM-USER-NAME: alice\r\n"
        "X-SLURM-USER-TOKEN: tok-alice\r\n"
    ).encode()
    await c.send(request + ids + b"\r\n")
    r = await c.response()
    assert stack.app.stats.fast_forwards == 1
    given = r.header(b"x-request-id")
    assert given is not None
    assert len(given) == 32
    upstream_ids = [v for k, v in stack.recorder.seen[0] if k == b"x-request-id"]
    assert upstream_ids == [given]  # the client's unusable ones never go upstream


@pytest.mark.parametrize(
    ("path", "extra", "status"),
    [
        ("/slurm/v0.0.43/nothing", b"", 404),  # an error status: the guard must see it
        (PING, b"", 500),  # a refused token (22.05's answer): counted by the guard
        (BIG, b"X-Size: 2000000\r\n", 200),  # over the lane's limit: streamed
    ],
)
async def test_answers_the_lane_does_not_give_are_relayed_by_the_asgi_path(
    stack: Stack, connect: Connect, path: str, extra: bytes, status: int
) -> None:
    token = "wrong" if status == 500 else None
    a, b = await both(stack, connect, get(path, extra=extra, token=token))
    assert a.status == status
    assert without_date(a) == without_date(b)
    assert stack.app.stats.fast_forwards == 0
    assert stack.app.stats.upstream_requests.total() == 2  # the handover is not forwarded again
    assert in_use(stack.app) == 0


async def test_the_guard_counts_refusals_the_lane_forwarded(connect: Connect) -> None:
    async for stack in make_stack(auth_fail_limit=2):
        c = await connect(stack.fast)
        for _ in range(2):
            await c.send(get(PING, "mallory", token="guess"))
            assert (await c.response()).status == 500
        await c.send(get(PING, "mallory", token="guess"))
        r = await c.response()
        assert r.status == 429
        assert stack.upstream.total("GET", "/ping") == 2


async def test_an_upstream_fault_gets_slurmrestds_error_shape_from_both_paths(
    connect: Connect,
) -> None:
    app = CacheProxyApp(Settings(upstream="http://127.0.0.1:9", connect_timeout=1))
    await app.startup()
    hardened = hardening.wrap(app)
    try:
        async with (
            serve(hardened, lifespan="off") as fast,
            serve(hardened, lifespan="off", http="httptools") as plain,
        ):
            stack = Stack(FakeSlurmrestd(), Recorder(FakeSlurmrestd()), app, fast, plain)
            a, b = await both(stack, connect, get(PING))
    finally:
        await app.shutdown()
    assert a.status == b.status == 502
    assert without_date(a) == without_date(b)
    assert orjson.loads(a.body)["errors"][0]["error"]
    assert app.stats.fast_forwards == 0
    assert app.stats.internal_errors == 0


async def test_an_answer_too_large_to_hold_is_streamed_and_its_connection_freed(
    stack: Stack, connect: Connect
) -> None:
    """slurmrestd's answer to an uncached GET, too large to hold whole, is
    relayed through the ASGI cycle; the upstream connection is freed after."""
    c = await connect(stack.fast)
    await c.send(get(BIG, extra=b"X-Size: 2000000\r\n"))
    r = await c.response()
    assert r.status == 200
    assert len(r.body) >= 2_000_000
    for _ in range(50):
        if in_use(stack.app) == 0:
            break
        await asyncio.sleep(0.01)
    assert in_use(stack.app) == 0
    assert stack.app.stats.fast_forwards == 0


async def test_a_client_gone_while_the_lane_forwards_frees_the_connection(
    stack: Stack, connect: Connect
) -> None:
    stack.upstream.last_change = 10.0**10  # the delta is not empty: the GET waits on the gate
    stack.upstream.gate = asyncio.Event()
    gone = await connect(stack.fast)
    await gone.send(get(DELTA))
    await asyncio.wait_for(stack.upstream.entered.wait(), 5)
    gone.writer.transport.abort()
    await asyncio.sleep(0.05)
    stack.upstream.gate.set()
    for _ in range(50):
        if in_use(stack.app) == 0:
            break
        await asyncio.sleep(0.01)
    assert in_use(stack.app) == 0
    assert stack.app.stats.internal_errors == 0
    c = await connect(stack.fast)  # and the lane goes on serving
    await c.send(get(PING))
    assert (await c.response()).status == 200


async def test_pipelined_forwards_and_hits_are_answered_in_order(
    stack: Stack, connect: Connect
) -> None:
    jobs = "/slurm/v0.0.43/jobs"
    c = await connect(stack.fast)
    await c.send(get(jobs))
    assert (await c.response()).status == 200
    await asyncio.sleep(0.05)  # the entry is stored
    order = [PING, jobs, "/slurm/v0.0.43/nothing", BIG, jobs, PING]
    await c.send(b"".join(get(p, extra=b"X-Size: 1234\r\n") for p in order))
    got = [await c.response() for _ in order]
    assert [r.status for r in got] == [200, 200, 404, 200, 200, 200]
    assert b'"pings"' in got[0].body
    assert b'"pings"' in got[5].body
    assert b'"jobs"' in got[1].body
    assert b'"jobs"' in got[4].body
    assert len(orjson.loads(got[3].body)["blob"]) == 1234
    assert stack.app.stats.fast_forwards == 3
