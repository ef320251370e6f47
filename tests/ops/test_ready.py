"""Readiness follows the upstream and reports the shared store; liveness
follows neither."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.store.base import Entry, Generations, Lookup
from cacheproxy.store.memory import MemoryStore
from cacheproxy.upstream.base import BufferedResponse, UpstreamRequest, UpstreamResponse
from tests.clock import Clock
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.ops.conftest import AppFactory, auth

READY = "/_cacheproxy/ready"
PING = "GET /slurm/v0.0.38/ping"


def client_for(app: CacheProxyApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy.test")


async def test_ready_flips_with_the_upstream(
    client: httpx.AsyncClient, transport: Any, upstream: FakeSlurmrestd, mono: Clock
) -> None:
    r = await client.get(READY)
    assert r.status_code == 200
    # no credentials: slurmrestd answers 401, which proves it alive
    assert r.json() == {
        "status": "ready",
        "upstream": "ok: reachable (HTTP 401 to the anonymous probe is expected)",
        "store": "local",
        "cache": "on",
    }
    assert upstream.hits[PING] == 1

    transport.down = True
    assert (await client.get(READY)).status_code == 200  # the verdict is cached for 1 s
    mono.advance(1.0)
    r = await client.get(READY)
    assert r.status_code == 503
    assert r.json()["status"] == "not ready"
    assert "UpstreamConnectError" in r.json()["upstream"]
    assert (await client.get("/_cacheproxy/health")).json() == {"status": "ok"}

    transport.down = False
    mono.advance(1.0)
    assert (await client.get(READY)).status_code == 200
    assert upstream.hits[PING] == 2


async def test_concurrent_probes_share_one_check(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    rs = await asyncio.gather(*(client.get(READY) for _ in range(20)))
    assert {r.status_code for r in rs} == {200}
    assert upstream.hits[PING] == 1


class _Answers:
    """A transport answering every request with ``status`` (or never)."""

    def __init__(self, status: int | None) -> None:
        self.status = status

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.status is None:
            await asyncio.Event().wait()
        assert self.status is not None
        return BufferedResponse(status=self.status, headers=[], body=b"x")

    async def aclose(self) -> None:
        return None


async def test_gateway_errors_and_timeouts_are_not_ready(
    make_app: AppFactory, settings: Settings
) -> None:
    for status in (404, 500):  # odd, but an answer from slurmrestd itself
        app: CacheProxyApp = await make_app(settings, transport=_Answers(status))
        async with client_for(app) as c:
            assert (await c.get(READY)).status_code == 200, status
    app = await make_app(settings, transport=_Answers(502))
    async with client_for(app) as c:
        r = await c.get(READY)
        assert r.status_code == 503
        assert r.json()["upstream"] == "HTTP 502 from a gateway"
    app = await make_app(settings, transport=_Answers(None))
    app.own.state.readiness.timeout = 0.01
    async with client_for(app) as c:
        r = await c.get(READY)
        assert r.status_code == 503
        assert r.json()["upstream"].startswith("timed out")


class PingableStore:
    """A shared-tier stand-in: a MemoryStore plus ``ping()``."""

    def __init__(self, clock: Clock) -> None:
        self.inner = MemoryStore(clock=clock)
        self.answers = True

    async def ping(self) -> bool:
        return self.answers

    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        return await self.inner.lookup(key, tags, credential)

    async def generations(self, tags: Sequence[str]) -> Generations:
        return await self.inner.generations(tags)

    async def put(self, key: bytes, entry: Entry) -> bool:
        return await self.inner.put(key, entry)

    async def remove(self, key: bytes) -> None:
        await self.inner.remove(key)

    async def bump(self, tags: Sequence[str]) -> None:
        await self.inner.bump(tags)

    async def accept(self, credential: bytes, until: float) -> None:
        await self.inner.accept(credential, until)

    async def revoke(self, credential: bytes) -> None:
        await self.inner.revoke(credential)

    async def acquire_lease(self, key: bytes, seconds: float) -> bool:
        return await self.inner.acquire_lease(key, seconds)

    async def release_lease(self, key: bytes) -> None:
        await self.inner.release_lease(key)

    async def clear(self) -> None:
        await self.inner.clear()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_redis_down_is_reported_but_the_replica_stays_ready(
    make_app: AppFactory, settings: Settings, clock: Clock, mono: Clock, transport: Any
) -> None:
    """Issue 14: a replica whose Redis is down still answers every request
    (pass-through), so it stays in the balancer; the body says why the
    cache is off.  Before: 503, which took every replica sharing that Redis
    out at once."""
    store = PingableStore(clock)
    app: CacheProxyApp = await make_app(settings, store=store, shared_store=True)
    async with client_for(app) as c:
        r = await c.get(READY)
        assert r.status_code == 200
        assert r.json()["store"] == "ok"
        assert r.json()["cache"] == "on"
        store.answers = False
        mono.advance(1.0)
        r = await c.get(READY)
        assert r.status_code == 200
        assert r.json() == {
            "status": "ready",
            "upstream": "ok: reachable (HTTP 401 to the anonymous probe is expected)",
            "store": "no answer to PING",
            "cache": "pass-through",
        }
        # and it does answer: straight from slurmrestd
        ping = await c.get("/slurm/v0.0.38/ping", headers=auth("alice"))
        assert ping.status_code == 200, ping.text
        # slurmrestd down is what makes it unready, Redis or not
        transport.down = True
        mono.advance(1.0)
        r = await c.get(READY)
        assert r.status_code == 503
        assert r.json()["cache"] == "pass-through"


async def test_not_ready_before_start(settings: Settings) -> None:
    app = CacheProxyApp(settings, transport=_Answers(200), store=MemoryStore())
    verdict = await app.own.state.readiness.check()
    assert not verdict.ready
    assert verdict.upstream == "not started"
