"""Stale serving per rule, in-process with an injected clock: only valid
entries, only to accepted credentials, only within the window, marked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from cacheproxy.core import errors
from cacheproxy.core.rules import RuleSet
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.store.memory import MemoryStore
from cacheproxy.upstream.protect import ProtectedTransport
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.hardening.conftest import JOBS, Clock, V, auth, check

NODES = f"{V}/nodes"
RULES = """
[[rule]]
name = "jobs"
path = "/slurm/{v}/jobs"
ttl = 5
tags = ["jobs"]
stale_if_error = 60

[[rule]]
name = "nodes"
path = "/slurm/{v}/nodes"
ttl = 5
tags = ["nodes"]
stale_while_revalidate = 30

[[rule]]
name = "partitions"
path = "/slurm/{v}/partitions"
ttl = 5
tags = ["partitions"]

[[rule]]
name = "submit"
methods = ["POST"]
path = "/slurm/{v}/job/submit"
invalidates = ["jobs", "nodes"]
"""


class World:
    def __init__(self, fake: FakeSlurmrestd, transport: ASGITransport, app: CacheProxyApp) -> None:
        self.fake, self.transport, self.app = fake, transport, app
        self.clock = Clock()

    @property
    def stats(self):  # type: ignore[no-untyped-def]
        return self.app.stats


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    fake = FakeSlurmrestd()
    transport = ASGITransport(fake)
    clock = Clock()
    app = CacheProxyApp(
        Settings(upstream="http://upstream.test:6820"),
        rules=RuleSet.from_toml(RULES),
        transport=transport,
        store=MemoryStore(clock=clock),
    )
    await app.startup()
    assert app.proxy is not None
    app.proxy.clock = clock
    w = World(fake, transport, app)
    w.clock = clock
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        yield w, c
    await app.shutdown()


def status_of(r: httpx.Response) -> str:
    return r.headers["cache-status"]


async def test_stale_if_error_within_the_window(world: tuple[World, httpx.AsyncClient]) -> None:
    w, c = world
    first = await c.get(JOBS, headers=auth("alice"))
    w.transport.down = True
    w.clock.advance(10)
    r = check(await c.get(JOBS, headers=auth("alice")))
    assert r.status_code == 200
    assert r.content == first.content
    assert status_of(r) == "cacheproxy; fwd=stale; detail=stale-if-error; ttl=-5"
    assert r.headers["age"] == "10"
    assert w.stats.stale_served == 1
    assert w.stats.max_stale_age == 10
    w.clock.advance(55)  # 65 s old: past ttl + stale_if_error
    late = check(await c.get(JOBS, headers=auth("alice")))
    assert late.status_code == 502
    assert late.json()["errors"][0]["source"] == "cacheproxy"


async def test_no_stale_without_a_window(world: tuple[World, httpx.AsyncClient]) -> None:
    w, c = world
    await c.get(f"{V}/partitions", headers=auth("alice"))
    w.transport.down = True
    w.clock.advance(6)
    r = check(await c.get(f"{V}/partitions", headers=auth("alice")))
    assert r.status_code == 502


async def test_no_stale_for_a_credential_not_yet_accepted(
    world: tuple[World, httpx.AsyncClient],
) -> None:
    w, c = world
    await c.get(JOBS, headers=auth("alice"))
    w.transport.down = True
    w.clock.advance(10)
    for token in ("tok-root", "tok-guess", "tok-bob"):
        r = check(await c.get(JOBS, headers=auth("alice", token)))
        assert r.status_code == 502, token  # never alice's entry for an unjudged token
    assert w.stats.stale_served == 0


async def test_no_stale_after_acceptance_lapsed(world: tuple[World, httpx.AsyncClient]) -> None:
    w, c = world
    await c.get(JOBS, headers=auth("alice"))
    w.transport.down = True
    w.clock.advance(61)  # auth_ttl is 60 s
    r = check(await c.get(JOBS, headers=auth("alice")))
    assert r.status_code == 502


async def test_write_invalidates_stale_too(world: tuple[World, httpx.AsyncClient]) -> None:
    w, c = world
    await c.get(JOBS, headers=auth("alice"))
    await c.get(JOBS, headers=auth("bob"))
    posted = await c.post(f"{V}/job/submit", headers=auth("alice"), content=b"{}")
    assert posted.status_code == 200
    w.transport.down = True
    w.clock.advance(10)
    for user in ("alice", "bob"):
        r = check(await c.get(JOBS, headers=auth(user)))
        assert r.status_code == 502, user
    assert w.stats.stale_served == 0


async def test_stale_while_revalidate_answers_at_once_and_refreshes_once(
    world: tuple[World, httpx.AsyncClient],
) -> None:
    w, c = world
    await c.get(NODES, headers=auth("alice"))
    assert w.fake.total("GET", "/nodes") == 1
    w.clock.advance(8)
    rs = await asyncio.gather(*(c.get(NODES, headers=auth("alice")) for _ in range(10)))
    for r in rs:
        assert r.status_code == 200
        assert status_of(r) == ("cacheproxy; hit; fwd=stale; detail=stale-while-revalidate; ttl=-3")
    for _ in range(100):  # the background refresh: one flight, then a fresh entry
        await asyncio.sleep(0)
        if not len(w.app.proxy.coalescer):  # type: ignore[union-attr]
            break
    assert w.fake.total("GET", "/nodes") == 2
    fresh = await c.get(NODES, headers=auth("alice"))
    assert status_of(fresh).startswith("cacheproxy; hit; ttl=")


async def test_stale_while_revalidate_window_and_writes(
    world: tuple[World, httpx.AsyncClient],
) -> None:
    w, c = world
    await c.get(NODES, headers=auth("alice"))
    w.clock.advance(40)  # past ttl + 30
    r = await c.get(NODES, headers=auth("alice"))
    assert status_of(r) == "cacheproxy; fwd=miss; stored"
    w.clock.advance(10)
    await c.post(f"{V}/job/submit", headers=auth("alice"), content=b"{}")
    r = await c.get(NODES, headers=auth("alice"))
    assert status_of(r) == "cacheproxy; fwd=miss; stored"  # the write made it invalid


async def test_upstream_busy_is_a_503_with_retry_after() -> None:
    fake = FakeSlurmrestd()
    fake.gate = asyncio.Event()
    inner = ASGITransport(fake)
    protected = ProtectedTransport(inner, max_concurrent=1, max_queue=0)
    app = CacheProxyApp(
        Settings(upstream="http://upstream.test:6820"), transport=protected, store=MemoryStore()
    )
    protected.stats = app.stats
    await app.startup()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        held = asyncio.create_task(c.get(JOBS, headers=auth("alice")))
        await fake.entered.wait()
        r = check(await c.get(JOBS, headers=auth("bob")))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["errors"][0]["error"] == errors.UPSTREAM_BUSY.error
        fake.gate.set()
        assert (await held).status_code == 200
    assert app.stats.upstream_busy == 1
    await app.shutdown()


async def test_breaker_open_is_a_503_then_stale() -> None:
    fake = FakeSlurmrestd()
    inner = ASGITransport(fake)
    protected = ProtectedTransport(inner, breaker_failures=2, breaker_cooldown=30)
    clock = Clock()
    app = CacheProxyApp(
        Settings(upstream="http://upstream.test:6820"),
        rules=RuleSet.from_toml(RULES),
        transport=protected,
        store=MemoryStore(clock=clock),
    )
    protected.stats = app.stats
    await app.startup()
    assert app.proxy is not None
    app.proxy.clock = clock
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        await c.get(JOBS, headers=auth("alice"))
        inner.down = True
        codes = [check(await c.get(f"{V}/ping", headers=auth("alice"))) for _ in range(3)]
        assert [r.status_code for r in codes] == [502, 502, 503]
        assert codes[2].json()["errors"][0]["error"] == errors.UPSTREAM_CIRCUIT_OPEN.error
        assert int(codes[2].headers["retry-after"]) >= 29
        clock.advance(10)
        r = check(await c.get(JOBS, headers=auth("alice")))
        assert r.status_code == 200
        assert "stale-if-error" in status_of(r)
    assert app.stats.breaker_rejected >= 2
    await app.shutdown()
