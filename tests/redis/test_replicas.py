"""Three replicas behind HAProxy sharing one Redis act as one cache.

Phases are counted in requests, never in seconds: the tests assert
behaviour (violations, errors, where requests went), not timing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.redis.conftest import ROOT, Site, _http_get

pytestmark = [pytest.mark.redis, pytest.mark.haproxy, pytest.mark.slow]

V = "v0.0.43"
LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=200)


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers=ROOT, timeout=30.0, limits=LIMITS)


async def job_ids(c: httpx.AsyncClient, n: int) -> list[int]:
    r = await c.get(f"/slurm/{V}/jobs")
    assert r.status_code == 200
    return [int(j["job_id"]) for j in r.json()["jobs"][:n]]


def comment_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text[:300]
    return str(r.json()["jobs"][0]["comment"])


async def test_read_your_writes_across_replicas_under_concurrent_polling(
    site: Callable[..., Site],
) -> None:
    """Each write goes through replica A and its check read through replica B,
    while pollers keep every replica's cache (and local tier) hot with the
    job as it was.  1,000 write->read pairs, 0 violations."""
    s = site()
    replicas = [client(p.url) for p in s.replicas]
    lb = client(s.lb.url)
    try:
        jobs = await job_ids(lb, 8)
        stop = asyncio.Event()
        seen: Counter[str] = Counter()

        async def poll() -> None:
            while not stop.is_set():
                r = await lb.get(f"/slurm/{V}/job/{random.choice(jobs)}")
                assert r.status_code == 200
                seen[r.headers.get("cache-status", "").split(";")[1].strip()] += 1

        checks = 0
        violations: list[str] = []

        async def write_then_read(job: int, offset: int, pairs: int) -> None:
            nonlocal checks
            for i in range(pairs):
                a = replicas[(offset + i) % 3]
                b = replicas[(offset + i + 1) % 3]
                value = f"ryw-{job}-{i}"
                w = await a.post(f"/slurm/{V}/job/{job}", json={"comment": value})
                assert w.status_code == 200, w.text[:300]
                got = comment_of(await b.get(f"/slurm/{V}/job/{job}"))
                checks += 1
                if got != value:
                    violations.append(f"job {job}: wrote {value!r}, then read {got!r}")

        pollers = [asyncio.create_task(poll()) for _ in range(12)]
        try:
            await asyncio.gather(*(write_then_read(j, k, 125) for k, j in enumerate(jobs)))
        finally:
            stop.set()
            await asyncio.gather(*pollers)
    finally:
        for c in (*replicas, lb):
            await c.aclose()
    assert checks == 1000
    assert violations == []
    assert seen["hit"] > 0, f"the pollers never hit the cache: {seen}"
    # Those hits were answered by the fast lane (the server protocol, over
    # Redis), so the 0 above holds for it too, not only for the ASGI path.
    fast = [
        int(json.loads(_http_get(p.url + "/_cacheproxy/stats")[1])["fast_hits"]) for p in s.replicas
    ]
    assert sum(fast) > 0, fast


@pytest.mark.parametrize(
    "jobs",
    [
        60,
        pytest.param(400, id="multi-MB-body"),
    ],
)
async def test_three_times_fifty_identical_gets_make_one_upstream_request(
    site: Callable[..., Site], jobs: int
) -> None:
    s = site(redis_timeout=0.5, jobs=jobs)  # counts upstream requests exactly: see site()
    replicas = [client(p.url) for p in s.replicas]
    try:
        # slurmrestd accepts the token once, in a cached read through any
        # replica; the acceptance is shared, so every replica may share the
        # answer (an unaccepted token is coalesced only with itself, per
        # replica, until slurmrestd has judged it).
        warm = await replicas[0].get(f"/slurm/{V}/partitions")
        assert warm.status_code == 200, warm.text[:500]
        s.reset_sim()
        path = f"/slurmdb/{V}/jobs"  # a slurmdbd read: 150-360 ms in the model
        answers = await asyncio.gather(
            *(c.get(path) for c in replicas for _ in range(50)), return_exceptions=True
        )
    finally:
        for c in replicas:
            await c.aclose()
    assert s.upstream_route("GET /slurmdb/{v}/jobs") == 1
    assert s.upstream_total() == 1
    broken = [a for a in answers if isinstance(a, BaseException)]
    assert broken == []
    statuses = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    assert statuses == [200] * 150
    assert len({a.content for a in answers if isinstance(a, httpx.Response)}) == 1


@dataclass
class Load:
    """Concurrent GETs of hot paths through the load balancer."""

    c: httpx.AsyncClient
    paths: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    done: int = 0

    async def one(self) -> None:
        try:
            r = await self.c.get(random.choice(self.paths))
        except httpx.HTTPError as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
        else:
            self.statuses[r.status_code] += 1
            if r.status_code >= 500:
                self.failures.append(f"{r.status_code}: {r.text[:200]}")
            status = r.headers.get("cache-status", "")
            self.outcomes["hit" if "; hit" in status else "fwd"] += 1
        self.done += 1

    async def run(self, requests: int, workers: int) -> None:
        """``requests`` more requests, ``workers`` at a time."""
        target = self.done + requests
        started = self.done

        async def worker() -> None:
            nonlocal started
            while started < target:
                started += 1
                await self.one()

        await asyncio.gather(*(worker() for _ in range(workers)))


async def hot_paths(c: httpx.AsyncClient) -> list[str]:
    jobs = await job_ids(c, 5)
    return [
        f"/slurm/{V}/jobs",
        f"/slurm/{V}/nodes",
        f"/slurm/{V}/partitions",
        *(f"/slurm/{V}/job/{j}" for j in jobs),
    ]


async def test_a_replica_killed_mid_load(site: Callable[..., Site]) -> None:
    """HAProxy routes around a SIGKILLed replica; only requests in flight on
    it may fail (GETs are even retried by HAProxy on an empty response)."""
    s = site()
    workers = 24
    async with client(s.lb.url) as lb:
        load = Load(lb, await hot_paths(lb))
        await load.run(600, workers)
        assert load.failures == []
        s.replicas[1].kill()
        await load.run(600, workers)  # HAProxy notices by itself meanwhile
        for _ in range(300):
            if s.lb.stats()["r1"].startswith("DOWN"):
                break
            await load.run(100, workers)
        else:
            pytest.fail(f"HAProxy never marked the killed replica down: {s.lb.stats()}")
        during = len(load.failures)
        await load.run(600, workers)
    assert during <= workers, load.failures  # at most the requests in flight on it
    assert len(load.failures) == during, load.failures[during:]  # none once it is known down
    assert s.lb.stats()["r0"].startswith("UP")
    assert s.lb.stats()["r2"].startswith("UP")


async def test_redis_stopped_and_restarted_mid_load(site: Callable[..., Site]) -> None:
    """No 5xx while Redis is away; upstream takes the load meanwhile and is
    relieved again once Redis is back (with nothing cached: it restarted)."""
    s = site()
    workers = 16
    async with client(s.lb.url) as lb:
        load = Load(lb, await hot_paths(lb))
        await load.run(400, workers)  # warm

        async def upstream_share(requests: int) -> float:
            before = s.upstream_total()
            await load.run(requests, workers)
            return (s.upstream_total() - before) / requests

        with_redis = await upstream_share(600)
        s.redis.stop()
        without_redis = await upstream_share(600)
        s.redis.start()  # same port, empty
        hits_before = load.outcomes["hit"]
        for _ in range(300):  # it recovers by itself
            if load.outcomes["hit"] - hits_before >= 200:
                break
            await load.run(100, workers)
        else:
            pytest.fail("the replicas never served from the cache again")
        after = await upstream_share(600)
    assert load.failures == []
    assert all(code == 200 for code in load.statuses), load.statuses
    assert with_redis < 0.2
    assert without_redis > 0.5
    assert after < 0.2
    for replica in s.replicas:  # one line per outage episode, not one per request
        text = replica.log_text()
        assert text.count("unavailable") <= 3, text[-2000:]
