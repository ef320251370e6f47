"""The audit of shared views (issue 17, item 4): a wrong ``PrivateData`` is
caught within the bound docs/OPERATIONS.md states; a right one is never
demoted, jobs changing or not; a demotion reaches another replica through
real Redis.

The proxy runs in process in front of the simulator (its ASGI app called
in process: the simulator authenticates and hides jobs as slurmctld does),
with a clock the test moves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cacheproxy.core import audit
from cacheproxy.core.audit import AuditBook, Verdict
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.http.proxy import Proxy
from cacheproxy.settings import Settings
from cacheproxy.simulator import SimConfig, Simulator
from cacheproxy.store.base import Store
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore
from cacheproxy.store.tiered import TieredStore
from cacheproxy.upstream.base import UpstreamBusy, UpstreamRequest, UpstreamResponse
from tests.clock import Clock
from tests.core.asgi_transport import ASGITransport
from tests.store.servers import RedisServer

JOBS = "/slurm/v0.0.40/jobs"
JOBS_TTL = 5.0
USERS = [f"user{i:03d}" for i in range(1, 7)]


def auth(user: str) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": f"sim-token-{user}"}


def sim(**config: Any) -> Simulator:
    defaults: dict[str, Any] = {"cost_model": "none", "jobs": 60, "nodes": 10, "job_speed": 0}
    defaults.update(config)
    return Simulator(SimConfig(**defaults))


@asynccontextmanager
async def proxy_app(
    upstream: Simulator,
    clock: Clock,
    *,
    store: Store | None = None,
    transport: Any = None,
    **settings: Any,
) -> AsyncIterator[tuple[CacheProxyApp, httpx.AsyncClient]]:
    s = Settings(upstream="http://upstream.test:6820", private_data="none", **settings)
    app = CacheProxyApp(
        s,
        transport=transport or ASGITransport(upstream),
        store=store or MemoryStore(clock=clock),
        shared_store=store is not None,
    )
    await app.startup()
    assert app.proxy is not None
    app.proxy.clock = clock
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
        ) as client:
            yield app, client
    finally:
        await app.shutdown()


def proxy_of(app: CacheProxyApp) -> Proxy:
    assert app.proxy is not None
    return app.proxy


def leaked(user: str, resp: httpx.Response) -> bool:
    """The answer shows ``user`` a job of someone else."""
    assert resp.status_code == 200, resp.text
    return any(j["user_name"] != user for j in orjson.loads(resp.content)["jobs"])


# -- the pure decision ---------------------------------------------------------------
def test_compare_ignores_meta_and_the_response_clock_only() -> None:
    a = orjson.dumps({"jobs": [1, 2], "last_update": {"number": 1}, "meta": {"client": "a"}})
    b = orjson.dumps({"jobs": [1, 2], "last_update": {"number": 2}, "meta": {"client": "b"}})
    c = orjson.dumps({"jobs": [1], "last_update": {"number": 1}, "meta": {"client": "a"}})
    assert audit.compare(200, a, 200, b) is Verdict.SAME
    assert audit.compare(200, a, 200, c) is Verdict.DIFFERENT
    assert audit.compare(200, a, 500, a) is Verdict.DIFFERENT  # PrivateData=nodes: refused
    for status in (401, 429, 503):
        assert audit.compare(200, a, status, c) is Verdict.INCONCLUSIVE
    assert audit.compare(200, a, 200, None) is Verdict.INCONCLUSIVE  # too big to read
    assert audit.compare(200, b"{", 200, b"[") is Verdict.INCONCLUSIVE


def _window(book: AuditBook, n: int, filler: str, now: float) -> bool:
    """One TTL window: a fill, then another user within the window."""
    book.filled("jobs", b"k", filler, now, now + 0.01, 200, b"{}")
    return book.take("jobs", b"k", "other", now + 0.5) is not None


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.25, 0.1, 0.07])
def test_sampling_and_the_bound_in_windows(rate: float) -> None:
    every = audit.every(rate)
    worst = 0
    for goes_wrong_at in range(1, 2 * every + 2):
        book = AuditBook(rate=rate)
        compared = []
        now = 0.0
        for i in range(goes_wrong_at):  # right for a while
            now += 100
            if _window(book, i, "filler", now):
                compared.append(i)
                assert not book.decided("jobs", Verdict.SAME)
        # compared at the first fill, then once every `every` fills
        assert compared == list(range(0, goes_wrong_at, every))
        windows = 0  # wrong from now on
        demoted = False
        while not demoted:
            windows += 1
            assert windows <= audit.windows_bound(rate, from_start=False)
            now += 100
            if _window(book, windows, "filler", now):
                demoted = book.decided("jobs", Verdict.DIFFERENT)
        worst = max(worst, windows)
    assert worst == audit.windows_bound(rate, from_start=False)


def test_one_difference_is_rechecked_not_demoted() -> None:
    book = AuditBook(rate=0.1)
    assert _window(book, 0, "a", 0.0)
    assert not book.decided("jobs", Verdict.DIFFERENT)
    assert _window(book, 1, "a", 100.0)  # re-checked at the next fill, whatever the rate
    assert not book.decided("jobs", Verdict.SAME)
    assert not _window(book, 2, "a", 200.0)  # sampling again
    assert not book.decided("jobs", Verdict.INCONCLUSIVE)


def test_a_pair_needs_another_user_the_same_entry_and_the_same_moment() -> None:
    book = AuditBook(rate=1.0, window=1.0)
    book.filled("jobs", b"k", "alice", 10.0, 10.2, 200, b"{}")
    assert book.take("jobs", b"k", "alice", 10.3) is None  # the filler itself
    assert book.take("jobs", b"other-key", "bob", 10.3) is None
    pairing = book.take("jobs", b"k", "bob", 10.3)
    assert pairing is not None
    assert book.take("jobs", b"k", "carol", 10.4) is None  # one comparison per fill
    assert pairing.same_moment(10.9)
    assert pairing.same_moment(11.35)  # the filler took 0.2 s: so may the audit
    assert not pairing.same_moment(11.5)  # waited in a queue: not the same moment
    book.filled("jobs", b"k", "alice", 20.0, 20.1, 200, b"{}")
    assert book.take("jobs", b"k", "bob", 21.2) is None  # too late after the fill
    assert not book.armed


# -- through the proxy ---------------------------------------------------------------------
class Clocks:
    """The proxy's clock and the simulator's, moved together (slurmctld's
    and the proxy's clocks agree in a site: ``update_time`` compares them)."""

    def __init__(self, clock: Clock, upstream: Simulator) -> None:
        self.clock, self.upstream = clock, upstream

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.upstream.advance(seconds)


async def _round(
    client: httpx.AsyncClient, clock: Clock | Clocks, users: list[str], *, gap: float = 0.05
) -> list[tuple[str, httpx.Response]]:
    """One TTL window: the entry expires, then each user asks once, in order."""
    clock.advance(JOBS_TTL + 1)
    out = []
    for user in users:
        out.append((user, await client.get(JOBS, headers=auth(user))))
        clock.advance(gap)
    return out


async def test_wrong_setting_is_demoted_within_the_stated_bound() -> None:
    """Proxy told ``none``, slurmctld hides jobs: the audit turns /jobs per
    user; the answers that showed a user someone else's jobs before that are
    at most those of the windows the docs state (wrong from the start: 2)."""
    clock = Clock(time.time())
    upstream = sim(private_data="jobs")
    # Users who own jobs: a filler whose own view is empty would show nobody
    # anything of anyone else's, and the test could not see a leak.
    users = sorted({job.user for job in upstream.cluster.jobs.values()})[:6]
    rate = 0.1
    async with proxy_app(upstream, clock, shared_audit_rate=rate) as (app, client):
        proxy = proxy_of(app)
        assert proxy.scopes.shared("jobs")
        k = len(users)
        windows = leaky_windows = leaks = 0
        while proxy.scopes.shared("jobs"):
            windows += 1
            assert windows <= 10, "never demoted"
            # (each user's first request is its own: slurmrestd must accept
            # a credential before it may read a shared entry)
            now = sum(leaked(user, resp) for user, resp in await _round(client, clock, users))
            leaks += now
            leaky_windows += now > 0
            await proxy.audit.idle()
        bound = audit.windows_bound(rate, from_start=True)
        assert leaky_windows <= bound
        assert 0 < leaks <= bound * (k - 1)  # everyone but the owner of the view, per window
        assert "jobs" in app.stats.demoted_routes
        assert app.stats.shared_audits[("jobs", "different")] == 2
        # Per user from now on: nobody sees anyone else's jobs.
        for user, resp in await _round(client, clock, users):
            assert not leaked(user, resp)
        # The status page's and the metrics' sources say so.
        stats = (await client.get("/_cacheproxy/stats")).json()
        assert "jobs" in stats["demoted_routes"]
        assert stats["shared_audits"]["jobs"]["different"] == 2
        metrics = (await client.get("/_cacheproxy/metrics")).text
        assert "cacheproxy_shared_routes_demoted 1.0" in metrics
        assert 'cacheproxy_shared_audits_total{result="different",route="jobs"} 2.0' in metrics
        # Other shared routes stay shared (nodes are not private here).
        assert proxy.scopes.shared("nodes")


SUBMIT = {
    "script": "#!/bin/bash\nsleep 30\n",
    "job": {"name": "elsewhere", "environment": ["PATH=/bin"], "current_working_directory": "/"},
}


async def test_right_setting_never_demotes_when_jobs_change_between_the_fetches() -> None:
    """Nothing private, jobs submitted straight to slurmctld (not through the
    proxy: nothing invalidated) between windows, and once between the two
    fetches of a pair: that pair is inconclusive (slurmctld says the list
    changed), every other one the same; the route stays shared."""
    clock = Clock(time.time())
    upstream = sim()
    async with (
        proxy_app(upstream, clock, shared_audit_rate=1.0) as (app, client),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=upstream), base_url="http://slurmrestd"
        ) as direct,
    ):

        async def sbatch() -> None:
            r = await direct.post("/slurm/v0.0.40/job/submit", json=SUBMIT, headers=auth("root"))
            assert r.status_code == 200, r.text

        proxy = proxy_of(app)
        both = Clocks(clock, upstream)
        await _round(client, both, USERS, gap=2.0)  # (credentials accepted; late: not compared)
        await proxy.audit.idle()
        windows = 8
        bodies = set()
        for w in range(windows):
            await sbatch()
            both.advance(JOBS_TTL + 1)
            first = await client.get(JOBS, headers=auth(USERS[0]))
            bodies.add(orjson.dumps(orjson.loads(first.content)["jobs"]))
            if w == 3:
                await sbatch()  # between the fill and the audit's own fetch
            for user in USERS[1:]:
                both.advance(0.05)
                assert (await client.get(JOBS, headers=auth(user))).status_code == 200
            await proxy.audit.idle()
        assert len(bodies) == windows  # the list did change every window
        audits = app.stats.shared_audits
        assert audits == {("jobs", "same"): windows - 1, ("jobs", "inconclusive"): 1}
        assert proxy.scopes.shared("jobs")
        assert not app.stats.demoted_routes


async def test_right_setting_never_demotes_while_jobs_run() -> None:
    """Nothing private, jobs starting and ending in real time (50 times
    faster than real jobs) and between windows: never a difference counted,
    never demoted, at most one comparison per window."""
    clock = Clock(time.time())
    upstream = sim(job_speed=50.0, jobs=80)
    async with proxy_app(upstream, clock, shared_audit_rate=1.0) as (app, client):
        proxy = proxy_of(app)
        bodies = set()
        windows = 12
        both = Clocks(clock, upstream)
        for _ in range(windows):
            upstream.advance(30.0)
            both.advance(JOBS_TTL + 1)
            first = await client.get(JOBS, headers=auth(USERS[0]))
            bodies.add(orjson.dumps(orjson.loads(first.content)["jobs"]))
            for user in USERS[1:]:
                both.advance(0.05)
                assert (await client.get(JOBS, headers=auth(user))).status_code == 200
            await proxy.audit.idle()
        assert len(bodies) == windows
        audits = app.stats.shared_audits
        assert audits[("jobs", "different")] == 0
        runs = audits[("jobs", "same")] + audits[("jobs", "inconclusive")]
        # at most one comparison per window (the first included: a new
        # credential's request is a shared hit once its cheap proof is in)
        assert windows // 2 <= runs <= windows
        assert proxy.scopes.shared("jobs")
        assert not app.stats.demoted_routes


async def test_a_late_second_user_is_not_compared() -> None:
    """Another user long after the fill: a timing difference could not be
    told from a view difference, so no audit fetch is made."""
    clock = Clock(time.time())
    upstream = sim(private_data="jobs")
    async with proxy_app(upstream, clock, shared_audit_rate=1.0) as (app, client):
        proxy = proxy_of(app)
        # (slurmrestd accepts both credentials; the second late: not compared)
        await _round(client, clock, USERS[:2], gap=2.0)
        await proxy.audit.idle()
        before = app.stats.upstream_requests["jobs"]
        clock.advance(JOBS_TTL + 1)
        first = await client.get(JOBS, headers=auth(USERS[0]))
        assert "hit" not in first.headers["cache-status"]
        clock.advance(2.0)
        second = await client.get(JOBS, headers=auth(USERS[1]))
        assert "hit" in second.headers["cache-status"]
        await proxy.audit.idle()
        assert app.stats.upstream_requests["jobs"] == before + 1  # the fill only
        assert not app.stats.shared_audits


class Gate:
    """A transport in front of the simulator that, once shut, holds every
    request (``busy``: refuses it as the proxy's upstream limit would)."""

    def __init__(self, inner: ASGITransport) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.open.set()
        self.busy = False
        self.held = 0

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.busy:
            raise UpstreamBusy("too many requests in flight to slurmrestd")
        if not self.open.is_set():
            self.held += 1
            await self.open.wait()
        return await self.inner.send(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_audit_never_delays_an_answer_and_yields_to_upstream_limits() -> None:
    clock = Clock(time.time())
    upstream = sim(private_data="jobs")
    gate = Gate(ASGITransport(upstream))
    async with proxy_app(upstream, clock, transport=gate, shared_audit_rate=1.0) as (app, client):
        proxy = proxy_of(app)
        # (credentials accepted, late: not compared; user003's view stored)
        await _round(client, clock, USERS[:3], gap=2.0)
        await proxy.audit.idle()
        clock.advance(JOBS_TTL + 1)
        await client.get(JOBS, headers=auth(USERS[0]))  # the fill (revalidated), armed
        gate.open.clear()
        r = await client.get(JOBS, headers=auth(USERS[1]))  # answered...
        assert "hit" in r.headers["cache-status"]
        for _ in range(100):
            if gate.held:
                break
            await asyncio.sleep(0)
        assert gate.held == 1  # ...while the audit's own fetch is still held
        assert not app.stats.shared_audits
        gate.open.set()
        await proxy.audit.idle()
        assert app.stats.shared_audits[("jobs", "different")] == 1
        # The upstream limit refuses the audit's fetch: inconclusive, nothing else.
        clock.advance(JOBS_TTL + 1)
        await client.get(JOBS, headers=auth(USERS[0]))
        gate.busy = True
        r = await client.get(JOBS, headers=auth(USERS[1]))
        assert r.status_code == 200
        assert "hit" in r.headers["cache-status"]
        await proxy.audit.idle()
        gate.busy = False
        assert app.stats.shared_audits[("jobs", "inconclusive")] == 1
        assert proxy.scopes.shared("jobs")  # (suspect still: the next fill re-checks)


async def test_audit_off() -> None:
    clock = Clock(time.time())
    upstream = sim(private_data="jobs")
    async with proxy_app(upstream, clock, shared_audit_rate=0.0) as (app, client):
        for _ in range(3):
            await _round(client, clock, USERS)
        assert not app.stats.shared_audits
        assert proxy_of(app).scopes.shared("jobs")


# -- replicas --------------------------------------------------------------------------------
@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


def _redis_tier(url: str, clock: Clock) -> TieredStore:
    return TieredStore(
        local=MemoryStore(clock=clock),
        shared=RedisStore(url, prefix="audit:v1:", timeout=2.0, clock=clock),
        clock=clock,
    )


@pytest.mark.redis
async def test_demotion_reaches_another_replica_through_redis(redis_url: str) -> None:
    clock = Clock(time.time())
    upstream = sim(private_data="jobs")
    settings = {"hmac_key": "replicas-share-this", "shared_audit_rate": 0.1}
    async with (
        proxy_app(upstream, clock, store=_redis_tier(redis_url, clock), **settings) as (a, ca),
        proxy_app(upstream, clock, store=_redis_tier(redis_url, clock), **settings) as (b, cb),
    ):
        pa, pb = proxy_of(a), proxy_of(b)
        # Replica b is sharing /jobs and has read the (empty) set of demotions.
        await cb.get(JOBS, headers=auth(USERS[0]))
        await cb.get(JOBS, headers=auth(USERS[1]))
        await pb.audit.idle()
        assert pb.scopes.shared("jobs")
        # Replica a audits and demotes.
        for _ in range(4):
            await _round(ca, clock, USERS)
            await pa.audit.idle()
        assert not pa.scopes.shared("jobs")
        # b learns it on a shared answer once its check is due (<= SYNC_SECONDS).
        clock.advance(JOBS_TTL + 1)
        await cb.get("/slurm/v0.0.40/nodes", headers=auth(USERS[0]))
        await cb.get("/slurm/v0.0.40/nodes", headers=auth(USERS[1]))
        await pb.audit.idle()
        assert not pb.scopes.shared("jobs")
        assert b.stats.demoted_routes["jobs"] == "demoted by another replica's audit"
        for user, resp in await _round(cb, clock, USERS):
            assert not leaked(user, resp)
        # A replica started later with the same setting knows at once.
        store_c = _redis_tier(redis_url, clock)
        async with proxy_app(upstream, clock, store=store_c, **settings) as (c, cc):
            await cc.get("/slurm/v0.0.40/nodes", headers=auth(USERS[0]))
            await cc.get("/slurm/v0.0.40/nodes", headers=auth(USERS[1]))
            await proxy_of(c).audit.idle()
            assert not proxy_of(c).scopes.shared("jobs")
