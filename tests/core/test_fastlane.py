"""The fast lane (cacheproxy.http.server): hits answered by
the server protocol must be byte-for-byte what the ASGI path answers, and
every request the lane must not take (a miss, a refusal, a blocked client,
a body, a lane fault...) must still get its ASGI answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, NamedTuple

import pytest

from cacheproxy.core.rules import RuleSet
from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.store.base import Lookup
from cacheproxy.store.memory import MemoryStore
from tests.clock import Clock
from tests.core.fake_slurmrestd import FakeSlurmrestd, Job
from tests.core.servers import serve

JOBS = "/slurm/v0.0.43/jobs"
NODES = "/slurm/v0.0.43/nodes"
BIG = "/slurm/v0.0.43/big"
HIT = b"cacheproxy; hit; ttl=5"
"""A hit on the jobs list, fetched just now (its default rule's ttl)."""


def rules() -> RuleSet:
    """The default rules, plus a long-lived big entry (stored compressed)."""
    text = resources.files("cacheproxy.core").joinpath("default_rules.toml").read_text()
    return RuleSet.from_toml(
        text + '\n[[rule]]\nname="big"\npath="/slurm/{v}/big"\nttl=30\ntags=["big"]\n'
    )


class Response(NamedTuple):
    status: int
    head: bytes
    """Status line and headers, exactly as sent."""
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b": ")
            if k.lower() == name:
                return v
        return None


def without_date(r: Response) -> Response:
    """The response with its Date line removed (two servers may be a second apart)."""
    lines = [line for line in r.head.split(b"\r\n") if not line.startswith(b"date: ")]
    return r._replace(head=b"\r\n".join(lines))


class Raw:
    """One client connection that sends exact bytes and reads responses as
    they are framed on the wire (Content-Length only: all the proxy sends)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> Response:
        head = (await self.reader.readuntil(b"\r\n\r\n"))[:-4]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b": ")
            if k.lower() == b"content-length":
                length = int(v)
        body = await self.reader.readexactly(length)
        return Response(int(head.split(b" ", 2)[1]), head, body)

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""


Connect = Callable[[str], Awaitable[Raw]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open raw connections to a server URL; all closed after the test."""
    opened: list[asyncio.StreamWriter] = []

    async def open_one(url: str) -> Raw:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        opened.append(writer)
        return Raw(reader, writer)

    yield open_one
    for writer in opened:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def settle(app: CacheProxyApp) -> None:
    """Wait until fetches in flight have stored their entries (a response
    reaches the client before its entry is stored)."""
    proxy = app.proxy
    assert proxy is not None
    await asyncio.gather(*proxy.coalescer._tasks, *proxy.fill._background)


def get(path: str, user: str = "alice", extra: bytes = b"", *, token: str | None = None) -> bytes:
    token = token or f"tok-{user}"
    return (
        (
            f"GET {path} HTTP/1.1\r\nHost: proxy\r\nX-SLURM-USER-NAME: {user}\r\n"
            f"X-SLURM-USER-TOKEN: {token}\r\nX-Request-ID: fixed-id\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


class Stack(NamedTuple):
    upstream: FakeSlurmrestd
    app: CacheProxyApp
    fast: str
    """The proxy served with the fast-lane protocol (what ``serve`` runs)."""
    plain: str
    """The very same app served by plain uvicorn httptools: the ASGI path."""


class AwaitedStore(MemoryStore):
    """A store that must be awaited, like the Redis tier: no ``lookup_now``,
    and each lookup yields to the loop (``delay`` seconds, for ordering)."""

    lookup_now = None  # type: ignore[assignment]
    delay = 0.0
    lookups = 0

    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        self.lookups += 1
        await asyncio.sleep(self.delay)
        return MemoryStore.lookup_now(self, key, tags, credential)


@pytest.fixture(params=["in-process", "awaited"])
async def stack(clock: Clock, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The proxy on both protocols; its store answers at once (the lane
    answers in the parser callback) or must be awaited (the lane's task)."""
    upstream = FakeSlurmrestd()
    store = MemoryStore(clock=clock) if request.param == "in-process" else AwaitedStore(clock=clock)
    async with serve(upstream) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url), rules=rules(), store=store)
        await app.startup()
        assert app.proxy is not None
        app.proxy.clock = clock
        hardened = hardening.wrap(app)
        try:
            async with (
                serve(hardened, lifespan="off", date_header=True) as fast,
                serve(hardened, lifespan="off", date_header=True, http="httptools") as plain,
            ):
                yield Stack(upstream, app, fast, plain)
        finally:
            await app.shutdown()


async def warm(stack: Stack, connect: Connect, path: str = JOBS, user: str = "alice") -> None:
    """Fetch once so the next GET of ``path`` by ``user`` is a hit."""
    c = await connect(stack.plain)
    await c.send(get(path, user, b"X-Size: 300000\r\n" if path == BIG else b""))
    assert (await c.response()).status == 200
    await settle(stack.app)


async def test_a_hit_takes_the_lane_with_the_installed_uvicorn(
    stack: Stack, connect: Connect
) -> None:
    """Fails if a uvicorn upgrade silently turns the lane off."""
    await warm(stack, connect)
    c = await connect(stack.fast)
    await c.send(get(JOBS))
    r = await c.response()
    assert r.status == 200
    assert r.header(b"cache-status") == HIT
    assert stack.app.stats.fast_hits == 1
    assert stack.upstream.total("GET", "/jobs") == 1


@pytest.mark.parametrize("encoding", ["", "gzip", "zstd", "br;q=0.5, gzip;q=0.9"])
async def test_lane_and_asgi_path_send_identical_bytes(
    stack: Stack, clock: Clock, encoding: str, connect: Connect
) -> None:
    extra = b"X-Size: 300000\r\n"
    if encoding:
        extra += f"Accept-Encoding: {encoding}\r\n".encode()
    await warm(stack, connect, BIG)
    clock.advance(3)
    fast, plain = await connect(stack.fast), await connect(stack.plain)
    await fast.send(get(BIG, extra=extra))
    a = await fast.response()
    await plain.send(get(BIG, extra=extra))
    b = await plain.response()
    assert stack.app.stats.fast_hits == 1  # only the first took the lane
    assert a.header(b"date") is not None  # uvicorn's default headers, as on the ASGI path
    assert b.header(b"date") is not None
    assert without_date(a) == without_date(b)
    assert a.header(b"cache-status") == b"cacheproxy; hit; ttl=27"
    assert a.header(b"age") == b"3"
    assert a.header(b"x-request-id") == b"fixed-id"
    if encoding:
        assert a.header(b"content-encoding") in (b"gzip", b"zstd")
        assert a.header(b"vary") == b"accept-encoding"
        assert len(a.body) < 300000 // 10
    else:
        assert a.header(b"content-encoding") is None
        assert len(a.body) > 300000


async def test_pipelined_requests_are_answered_in_order(stack: Stack, connect: Connect) -> None:
    await warm(stack, connect)
    c = await connect(stack.fast)
    # a hit, a miss (forwarded: the ASGI path), a hit, a write, a hit
    await c.send(
        get(JOBS)
        + get(NODES)
        + get(JOBS, "alice")
        + b"POST /slurm/v0.0.43/job/submit HTTP/1.1\r\nHost: proxy\r\n"
        b"X-SLURM-USER-NAME: alice\r\nX-SLURM-USER-TOKEN: tok-alice\r\n"
        b"Content-Length: 2\r\n\r\n{}" + get(JOBS)
    )
    rs = [await c.response() for _ in range(5)]
    assert [r.status for r in rs] == [200] * 5
    outcomes = [r.header(b"cache-status") for r in rs]
    assert outcomes[0] == outcomes[2] == HIT
    assert outcomes[1] is not None
    assert b"fwd=miss" in outcomes[1]
    assert b"nodes" in rs[1].body
    job_id = json.loads(rs[3].body)["job_id"]
    assert outcomes[4] is not None
    assert b"fwd=miss" in outcomes[4]
    assert job_id in [j["job_id"] for j in json.loads(rs[4].body)["jobs"]]
    assert stack.app.stats.fast_hits == 2


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(JOBS, extra=b"Content-Length: 3\r\n")[:-2] + b"\r\nabc",
        get(JOBS, extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
        get(JOBS, token="other-token"),  # a credential not accepted yet
        get(JOBS, extra=b"X-SLURM-USER-NAME: bob\r\n"),  # two names
    ],
    ids=["content-length", "chunked", "new-token", "two-names"],
)
async def test_requests_the_lane_leaves_to_the_asgi_path(
    stack: Stack, request_bytes: bytes, connect: Connect
) -> None:
    await warm(stack, connect)
    c = await connect(stack.fast)
    await c.send(request_bytes)
    r = await c.response()
    assert stack.app.stats.fast_hits == 0
    assert r.status in (200, 400, 401, 500)
    await c.send(get(JOBS))  # the connection is still good, and a hit takes the lane
    assert (await c.response()).header(b"cache-status") == HIT
    assert stack.app.stats.fast_hits == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(JOBS, extra=b"Connection: close\r\n"),
        get(JOBS).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_hit_that_ends_the_connection_is_written_whole_then_closed(
    stack: Stack, request_bytes: bytes, connect: Connect
) -> None:
    """Since the proxy owns its server protocol (issue 16), a hit on a
    connection that closes after it is written at once too, with the bytes
    the ASGI path sends (``Connection: close`` included)."""
    await warm(stack, connect)
    fast, plain = await connect(stack.fast), await connect(stack.plain)
    await fast.send(request_bytes)
    a = await fast.response()
    await plain.send(request_bytes)
    b = await plain.response()
    assert a.header(b"cache-status") == HIT
    assert a.header(b"connection") == b"close"
    assert without_date(a) == without_date(b)
    assert await fast.closed()
    assert stack.app.stats.fast_hits == 1


async def test_while_the_guard_blocks_an_address_an_accepted_hit_passes_it(
    connect: Connect,
) -> None:
    """The guard's check of a blocked address awaits the acceptance record;
    the pipeline then completes and the protocol writes the hit itself."""
    upstream = FakeSlurmrestd()
    async with serve(upstream) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url, auth_fail_limit=2))
        async with serve(hardening.wrap(app)) as url:
            c = await connect(url)
            await c.send(get(JOBS))
            assert (await c.response()).status == 200
            await settle(app)
            for _ in range(2):
                await c.send(get(JOBS, "mallory", token="guess"))
                assert (await c.response()).status == 500  # 22.05's answer to a bad token
            await c.send(get(JOBS, "mallory", token="guess"))
            assert (await c.response()).status == 429
            await c.send(get(JOBS))  # alice's credential was accepted: she passes
            r = await c.response()
    assert (r.header(b"cache-status") or b"").startswith(b"cacheproxy; hit; ttl=")
    assert app.stats.fast_hits == 1
    assert upstream.total("GET", "/jobs") == 1 + 2


async def test_a_fault_on_the_hit_path_meets_the_safety_net_and_the_connection_goes_on(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    connect: Connect,
) -> None:
    await warm(stack, connect)
    assert stack.app.proxy is not None
    calls = 0

    def broken(ex: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    c = await connect(stack.fast)
    with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, logger="cacheproxy"):
        patch.setattr(stack.app.proxy, "respond", broken)
        await c.send(get(JOBS))
        r = await c.response()
    assert r.status == 503  # slurmrestd's error shape, never a bare 500
    assert json.loads(r.body)["errors"][0]["source"] == "cacheproxy"
    assert r.header(b"cache-status") == b"cacheproxy; detail=internal-error"
    assert calls == 1
    assert stack.app.stats.internal_errors == 1
    assert "internal error" in caplog.text
    await c.send(get(JOBS))
    r = await c.response()
    assert r.status == 200
    assert r.header(b"cache-status") == HIT


async def test_the_access_log_line_is_the_same_from_both_paths(
    capsys: pytest.CaptureFixture[str], connect: Connect
) -> None:
    upstream = FakeSlurmrestd()
    async with serve(upstream) as upstream_url:
        settings = Settings(upstream=upstream_url, access_log=True)
        app = CacheProxyApp(settings)
        hardening.configure_access_log()
        hardened = hardening.wrap(app)
        try:
            async with (
                serve(hardened) as fast,
                serve(hardened, http="httptools") as plain,  # the ASGI path
            ):
                c, p = await connect(fast), await connect(plain)
                await c.send(get(JOBS))  # miss
                rs = [await c.response()]
                await settle(app)
                forwarded = b"X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\n"
                for extra in (b"", forwarded):
                    await c.send(get(JOBS, extra=extra))  # hit: the lane
                    rs.append(await c.response())
                    await p.send(get(JOBS, extra=extra))  # hit: ASGI
                    rs.append(await p.response())
        finally:
            logging.getLogger("cacheproxy.access").handlers.clear()
    assert [r.status for r in rs] == [200] * 5
    assert app.stats.fast_hits == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 5
    for lane, asgi in (lines[1:3], lines[3:5]):
        assert lane["cache"] == asgi["cache"]
        assert lane["cache"].startswith("hit; ttl=")
        same = (
            "request_id",
            "client",
            "method",
            "path",
            "query",
            "status",
            "bytes",
            "user",
            "rule",
        )
        for field in same:
            assert lane[field] == asgi[field], field
        assert lane["request_id"] == "fixed-id"
        assert lane["rule"] == "jobs"
    assert lines[1]["bytes"] == len(rs[1].body)
    assert lines[1]["client"] == "127.0.0.1"
    assert lines[3]["client"] == "10.1.2.3"  # uvicorn's proxy headers, on the lane too


async def test_an_awaited_lane_answers_pipelined_requests_in_order(
    clock: Clock, connect: Connect
) -> None:
    """A slow store lookup in the lane's task holds back the requests
    pipelined behind it, as an ASGI task would."""
    upstream = FakeSlurmrestd()
    store = AwaitedStore(clock=clock)
    async with serve(upstream) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url), rules=rules(), store=store)
        async with serve(hardening.wrap(app)) as url:
            c = await connect(url)
            for path in (JOBS, NODES):
                await c.send(get(path))
                assert (await c.response()).status == 200
            await settle(app)
            store.delay = 0.05
            await c.send(get(JOBS) + get(NODES) + get("/slurm/v0.0.43/partitions") + get(JOBS))
            rs = [await c.response() for _ in range(4)]
    assert [b'"jobs"' in r.body for r in rs] == [True, False, False, True]
    assert b'"nodes"' in rs[1].body
    assert b'"partitions"' in rs[2].body
    assert [(r.header(b"cache-status") or b"").split(b";")[1] for r in rs] == [
        b" hit",
        b" hit",
        b" fwd=miss",
        b" hit",
    ]
    assert app.stats.fast_hits == 3


async def test_a_client_gone_while_the_lane_awaits_is_left_alone(
    clock: Clock, connect: Connect
) -> None:
    upstream = FakeSlurmrestd()
    store = AwaitedStore(clock=clock)
    async with serve(upstream) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url), rules=rules(), store=store)
        async with serve(hardening.wrap(app)) as url:
            c = await connect(url)
            await c.send(get(JOBS))
            assert (await c.response()).status == 200
            await settle(app)
            store.delay = 0.2
            gone = await connect(url)
            await gone.send(get(JOBS))
            await asyncio.sleep(0.05)
            gone.writer.transport.abort()
            await asyncio.sleep(0.3)
            store.delay = 0.0
            await c.send(get(JOBS))
            r = await c.response()
    assert (r.header(b"cache-status") or b"").startswith(b"cacheproxy; hit")
    assert app.stats.fast_hits == 2  # a hit found for a client gone, as on the ASGI path
    assert app.stats.internal_errors == 0
    assert upstream.total("GET", "/jobs") == 1  # and no second try by the ASGI path


async def test_a_miss_after_an_awaited_lane_asks_the_store_once(
    clock: Clock, connect: Connect
) -> None:
    """The lane's store answer is handed to the ASGI path: a request that is
    not a hit costs one round trip to a shared store, as without the lane."""
    upstream = FakeSlurmrestd()
    store = AwaitedStore(clock=clock)
    async with serve(upstream) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url), rules=rules(), store=store)
        hardened = hardening.wrap(app)
        async with (
            serve(hardened) as fast,
            serve(hardened, lifespan="off", http="httptools") as plain,
        ):
            for url, path in ((plain, NODES), (fast, JOBS)):
                c = await connect(url)
                await c.send(get("/slurm/v0.0.43/ping"))  # accept the credential
                assert (await c.response()).status == 200
                await settle(app)
                before = store.lookups
                await c.send(get(path))
                r = await c.response()
                assert (r.header(b"cache-status") or b"").startswith(b"cacheproxy; fwd=miss")
                await settle(app)
                assert store.lookups - before == 1, url
    assert app.stats.fast_hits == 0


async def test_requests_the_lane_declines_are_planned_once(
    stack: Stack, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane's parse of the request (headers scanned, target matched,
    credential hashed) is what the ASGI path uses: a miss or a pass-through
    pays for it once."""
    proxy = stack.app.proxy
    assert proxy is not None
    plans = 0
    real_plan = proxy._plan

    def counting(scope: Any, view: Any = None) -> Any:
        nonlocal plans
        plans += 1
        return real_plan(scope, view)

    monkeypatch.setattr(proxy, "_plan", counting)
    c = await connect(stack.fast)
    for path in (NODES, "/slurm/v0.0.43/diag", "/slurm/v0.0.43/jobs?update_time=1"):
        before = plans
        await c.send(get(path))
        assert (await c.response()).status in (200, 404)  # the fake has no /diag
        assert plans - before == 1, path


async def test_the_lane_serves_no_other_user_and_no_refused_token(
    stack: Stack, connect: Connect
) -> None:
    """No leak through the lane: with alice's list cached, bob gets his own
    (fetched), and a wrong token in alice's name gets slurmrestd's refusal,
    never alice's cached bytes."""
    upstream = stack.upstream
    upstream.jobs[7] = Job(7, "alice")
    await warm(stack, connect)
    c = await connect(stack.fast)
    await c.send(get(JOBS))
    alice = await c.response()
    assert alice.header(b"cache-status") == HIT
    assert b'"job_id": 7' in alice.body
    await c.send(get(JOBS, "bob"))
    bob = await c.response()
    assert (bob.header(b"cache-status") or b"").startswith(b"cacheproxy; fwd=")
    assert b'"job_id": 7' not in bob.body
    forged = await connect(stack.fast)
    await forged.send(get(JOBS, token="guess"))
    refused = await forged.response()
    assert refused.status == 500  # 22.05's answer to a bad token, from upstream
    assert b'"job_id": 7' not in refused.body
    assert stack.app.stats.fast_hits == 1
    assert upstream.total("GET", "/jobs") == 3  # warm, bob, the forged one
