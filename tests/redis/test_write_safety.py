"""Issue 14 across replicas: two proxies in process share a real Redis (the
test's own redis-server) in front of the core tests' fake slurmrestd.

* a write slurmrestd refuses empties no cache and writes nothing to Redis;
* a junk job id creates no generation key (counted with DBSIZE);
* a job write through one replica invalidates, on the other, every per-job
  entry it may touch (leading zeros, array tasks);
* during a Redis outage ``Cache-Status`` never says ``stored``, and
  ``/ready`` stays 200 (the replica passes through) and says why.

Each failed on the code before the fix (seen with the fix stashed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.core.asgi_transport import ASGITransport
from tests.core.conftest import auth
from tests.core.fake_slurmrestd import FakeSlurmrestd, Job
from tests.store.servers import RedisServer

pytestmark = [pytest.mark.redis]

V = "v0.0.43"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def upstream() -> FakeSlurmrestd:
    return FakeSlurmrestd()


@pytest.fixture
async def replicas(
    redis: RedisServer, upstream: FakeSlurmrestd
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two replicas sharing ``redis`` (same prefix, same HMAC key)."""
    settings = Settings(
        upstream="http://upstream.test:6820",
        redis_url=redis.url,
        redis_prefix="ws:v1:",
        hmac_key="write-safety-shared-key",
    )
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            app = CacheProxyApp(settings, transport=ASGITransport(upstream))
            await app.startup()
            stack.push_async_callback(app.shutdown)
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
            )
            stack.push_async_callback(client.aclose)
            clients.append(client)
        yield clients


def keys(redis: RedisServer) -> int:
    reply = redis.command("DBSIZE")
    assert reply is not None
    assert reply.startswith(":")
    return int(reply[1:])


def status_of(r: httpx.Response) -> str:
    return r.headers.get("cache-status", "")


async def hit(c: httpx.AsyncClient, path: str, user: str = "alice") -> bool:
    r = await c.get(path, headers=auth(user))
    assert r.status_code == 200, r.text
    return "hit" in status_of(r)


async def warm(a: httpx.AsyncClient, b: httpx.AsyncClient, path: str, user: str = "alice") -> None:
    """Cached through ``a``, and a hit through both."""
    await hit(a, path, user)
    assert await hit(a, path, user)
    assert await hit(b, path, user)


async def test_refused_writes_empty_no_cache_and_write_nothing_to_redis(
    replicas: list[httpx.AsyncClient], redis: RedisServer
) -> None:
    a, b = replicas
    await warm(a, b, f"/slurm/{V}/partitions")
    await warm(b, a, f"/slurm/{V}/jobs", user="bob")
    before = keys(redis)
    assert (await b.post("/nothing/here", content=b"{}")).status_code == 404
    forged = auth("alice", "forged")
    r = await a.post(f"/slurm/{V}/job/submit", headers=forged, content=b"{}")
    assert r.status_code == 500
    assert (await b.delete(f"/slurm/{V}/job/1")).status_code == 401
    assert keys(redis) == before
    for c in (a, b):
        assert await hit(c, f"/slurm/{V}/partitions")
        assert await hit(c, f"/slurm/{V}/jobs", user="bob")


async def test_junk_job_ids_create_no_key_in_redis(
    replicas: list[httpx.AsyncClient], redis: RedisServer
) -> None:
    """Before: every ``DELETE job/<junk>`` left two generation keys named by
    the client (``job:<junk>``, ``db.job:<junk>``) for an hour."""
    a, b = replicas
    await warm(a, b, f"/slurm/{V}/partitions")
    # the fixed tags a job write bumps exist from the first one on
    assert (await a.delete(f"/slurm/{V}/job/junk", headers=auth("alice"))).status_code == 500
    before = keys(redis)
    for i in range(20):
        c = replicas[i % 2]
        r = await c.delete(f"/slurm/{V}/job/junk-{i}-{'x' * i}", headers=auth("alice"))
        assert r.status_code == 500
        assert (await c.delete(f"/slurm/{V}/job/0x{i}")).status_code == 401
        assert (await c.get(f"/slurm/{V}/job/nope{i}", headers=auth("alice"))).status_code == 500
    assert keys(redis) == before


async def test_a_job_write_on_one_replica_invalidates_tasks_on_the_other(
    replicas: list[httpx.AsyncClient], upstream: FakeSlurmrestd
) -> None:
    a, b = replicas
    upstream.jobs[123] = Job(123, "alice", array_job_id=123, array_task_id=0)
    upstream.jobs[124] = Job(124, "alice", array_job_id=123, array_task_id=1)
    paths = [f"/slurm/{V}/job/124", f"/slurm/{V}/job/123_1", f"/slurmdb/{V}/job/124"]
    for path in paths:
        await warm(a, b, path)
    assert (await b.delete(f"/slurm/{V}/job/0123", headers=auth("alice"))).status_code == 200
    for path in paths:
        r = await a.get(path, headers=auth("alice"))
        assert "hit" not in status_of(r), path
        assert {j["job_state"] for j in r.json()["jobs"]} == {"CANCELLED"}, path


async def test_redis_outage_never_says_stored_and_stays_ready(
    replicas: list[httpx.AsyncClient], redis: RedisServer
) -> None:
    """Before: ``Cache-Status: ...; stored`` on every miss while Redis was
    down (the store refused the entry without a word), and ``/ready`` 503."""
    a, _ = replicas
    first = await a.get(f"/slurm/{V}/partitions", headers=auth("alice"))
    assert "stored" in status_of(first)
    redis.stop()
    for path in (f"/slurm/{V}/jobs", f"/slurm/{V}/jobs", f"/slurm/{V}/nodes"):
        r = await a.get(path, headers=auth("alice"))
        assert r.status_code == 200
        assert "fwd=miss" in status_of(r)
        assert "stored" not in status_of(r), status_of(r)
    ready = await a.get("/_cacheproxy/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["cache"] == "pass-through"
    assert ready.json()["store"] != "ok"
