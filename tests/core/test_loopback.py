"""The proxy over real sockets: uvicorn in front, the real upstream transport
behind, a fake slurmrestd on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NamedTuple

import httpx
import pytest

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.core.conftest import auth
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.core.servers import serve

JOBS = "/slurm/v0.0.43/jobs"


class Stack(NamedTuple):
    upstream: FakeSlurmrestd
    url: str
    app: CacheProxyApp


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    upstream = FakeSlurmrestd()
    async with serve(upstream) as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url))
        async with serve(app) as proxy_url:
            yield Stack(upstream, proxy_url, app)


async def test_200_concurrent_identical_gets_cause_one_upstream_request(
    stack: Stack,
) -> None:
    upstream, url, _ = stack
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
        await c.get("/slurm/v0.0.43/nodes", headers=auth("alice"))  # accept the credential
        upstream.gate = asyncio.Event()
        tasks = [asyncio.create_task(c.get(JOBS, headers=auth("alice"))) for _ in range(200)]
        await upstream.entered.wait()
        stats = stack.app.stats
        async with asyncio.timeout(60):  # every other request has joined the fetch
            while stats.coalesced < 199:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.01)
        upstream.gate.set()
        rs = await asyncio.gather(*tasks)
    assert {r.status_code for r in rs} == {200}
    assert len({r.content for r in rs}) == 1
    assert upstream.total("GET", "/jobs") == 1


async def test_submit_then_get_while_others_poll(stack: Stack) -> None:
    _, url, _ = stack
    stop = asyncio.Event()

    async def poll(c: httpx.AsyncClient, user: str) -> int:
        n = 0
        while not stop.is_set():
            r = await c.get(JOBS, headers=auth(user))
            assert r.status_code == 200
            n += 1
        return n

    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        pollers = [asyncio.create_task(poll(c, u)) for u in ("alice", "bob", "root", "alice")]
        for _ in range(100):
            r = await c.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
            job_id = r.json()["job_id"]
            listed = await c.get(JOBS, headers=auth("alice"))
            assert job_id in [j["job_id"] for j in listed.json()["jobs"]]
        stop.set()
        polled = await asyncio.gather(*pollers)
    assert sum(polled) > 0


async def test_pass_through_is_byte_faithful(stack: Stack) -> None:
    upstream, url, _ = stack
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/slurm/v0.0.43/echo/x", headers=auth("alice"), content=body)
    assert r.status_code == 200
    assert upstream.bodies[-1] == body
    assert r.content == body
    assert r.headers["content-type"] == "application/octet-stream"


async def test_error_with_connection_close_then_more_requests(
    stack: Stack,
) -> None:
    _, url, _ = stack
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for _ in range(20):
            bad = await c.get(JOBS, headers={"X-SLURM-USER-NAME": "alice"})
            assert bad.status_code == 401
            assert bad.content == b"Authentication failure"
            ok = await c.get(JOBS, headers=auth("alice"))
            assert ok.status_code == 200


async def test_upstream_down_gives_502() -> None:
    app = CacheProxyApp(Settings(upstream="http://127.0.0.1:9"))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.get(JOBS, headers=auth("alice"))
    assert r.status_code == 502
    assert r.json()["errors"][0]["source"] == "cacheproxy"


async def test_unix_socket_upstream(tmp_path: object) -> None:
    upstream = FakeSlurmrestd()
    async with serve(upstream, uds=f"{tmp_path}/slurmrestd.sock") as upstream_url:
        app = CacheProxyApp(Settings(upstream=upstream_url))
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            r1 = await c.get(JOBS, headers=auth("alice"))
            r2 = await c.get(JOBS, headers=auth("alice"))
    assert r1.status_code == 200
    assert r2.headers["cache-status"].startswith("cacheproxy; hit")
