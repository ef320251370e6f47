"""slurmctld's RPC queue dropping reads (``hard_drop``, 24.05 on): slurmrestd's
500 "Rate limit exceeded, please retry later", and the proxy in front of it.

The proxy treats that 500 as the controller asking for less, like the 502
"please retry momentarily": never stored, never a reason to distrust the
credential, and within ``stale_if_error`` the expired entry stands in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cacheproxy.core import policy
from cacheproxy.core.rules import RuleSet
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.simulator import SimConfig, Simulator
from cacheproxy.simulator.rpcqueue import HARD_DROP, HARD_DROP_TEXT, RpcQueues
from cacheproxy.store.memory import MemoryStore
from tests.core.asgi_transport import ASGITransport
from tests.hardening.conftest import Clock, check
from tests.simulator.conftest import ROOT, auth, started
from tests.simulator.spec_check import body_errors

RULES = """
[[rule]]
name = "jobs"
path = "/slurm/{v}/jobs"
ttl = 5
tags = ["jobs"]
stale_if_error = 60
"""


def test_the_queue_drops_over_max_queued_from_24_05_only() -> None:
    q = RpcQueues(max_queued=1)
    rpc = q.enter("jobs", (24, 5, 0))
    assert rpc == "REQUEST_JOB_INFO"
    assert q.enter("jobs", (24, 5, 0)) == ""  # full: dropped
    assert q.enter("node", (24, 5, 0)) is None  # REQUEST_NODE_INFO_SINGLE is not queued
    assert q.enter("jobs", (23, 11, 10)) is None  # no HARD_DROP before 24.05
    q.leave(rpc)
    assert q.enter("jobs", (24, 5, 0)) == "REQUEST_JOB_INFO"
    assert q.dropped == 1


@pytest.mark.parametrize(
    ("style", "version", "path"),
    [
        ("24.05", "v0.0.41", "jobs"),
        ("24.11", "v0.0.42", "nodes"),
        ("25.11", "v0.0.44", "partition/normal"),
        ("26.05", "v0.0.45", "job/{job}"),
    ],
)
def test_a_dropped_read_is_a_500_with_error_1805_in_the_spec_s_shape(
    style: str, version: str, path: str
) -> None:
    with started(style=style, rpc_queue_hard_drop=1) as sim:
        assert sim.app.rpc_queues is not None
        sim.app.rpc_queues.max_queued = 0  # every queued read is over the bound
        job = next(iter(sim.app.cluster.jobs))
        url = f"/slurm/{version}/{path.format(job=job)}"
        with sim.client(headers=auth("user001")) as c:
            r = c.get(url)
        assert r.status_code == 500
        doc = r.json()
        (error,) = doc["errors"]
        assert error["error_number"] == HARD_DROP
        assert error["error"] == HARD_DROP_TEXT
        pattern = tuple(path.replace("{job}", "{job_id}").split("/"))
        if path.startswith("job"):
            assert body_errors(version, "slurm", pattern, doc) == []
        else:  # as the real "node not found" answers: the payload's required keys absent
            assert set(doc) == {"meta", "errors", "warnings"}
        assert policy.controller_dropped(500, r.content)
        assert not policy.credential_refused(500, r.content)  # the token was fine
        with sim.client(headers=ROOT) as c:
            assert c.get("/_sim/stats").json()["rpc_hard_drops"] == 1


def test_releases_before_24_05_never_drop() -> None:
    with started(style="23.11", rpc_queue_hard_drop=1) as sim:
        assert sim.app.rpc_queues is not None
        sim.app.rpc_queues.max_queued = 0
        with sim.client(headers=auth("user001")) as c:
            assert c.get("/slurm/v0.0.40/jobs").status_code == 200
            assert c.get("/_sim/stats").json()["rpc_hard_drops"] == 0


class World:
    def __init__(self, sim: Simulator, app: CacheProxyApp, clock: Clock) -> None:
        self.sim, self.app, self.clock = sim, app, clock

    def drop_everything(self, on: bool) -> None:
        assert self.sim.rpc_queues is not None
        self.sim.rpc_queues.max_queued = 0 if on else 1000


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    sim = Simulator(
        SimConfig(
            style="24.05",
            cost_model="none",
            jobs=30,
            nodes=8,
            job_speed=0,
            rpc_queue_hard_drop=1000,
        )
    )
    clock = Clock()
    app = CacheProxyApp(
        Settings(upstream="http://upstream.test:6820"),
        rules=RuleSet.from_toml(RULES),
        transport=ASGITransport(sim),
        store=MemoryStore(clock=clock),
    )
    await app.startup()
    assert app.proxy is not None
    app.proxy.clock = clock
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        yield World(sim, app, clock), c
    await app.shutdown()


JOBS = "/slurm/v0.0.41/jobs"


async def test_the_proxy_serves_stale_for_a_dropped_read(
    world: tuple[World, httpx.AsyncClient],
) -> None:
    w, c = world
    first = check(await c.get(JOBS, headers=auth("user001")))
    assert first.status_code == 200
    w.drop_everything(True)
    w.clock.advance(10)  # expired, within stale_if_error
    r = check(await c.get(JOBS, headers=auth("user001")))
    assert r.status_code == 200
    assert r.content == first.content
    assert r.headers["cache-status"].startswith("cacheproxy; fwd=stale; detail=stale-if-error")
    # A credential the proxy has not seen accepted gets slurmrestd's own 500.
    other = check(await c.get(JOBS, headers=auth("user002")))
    assert other.status_code == 500
    assert other.json()["errors"][0]["error_number"] == HARD_DROP
    # Nothing of it was stored, and user001's credential is still trusted.
    w.drop_everything(False)
    again = check(await c.get(JOBS, headers=auth("user002")))
    assert again.status_code == 200
    assert "fwd=miss" in again.headers["cache-status"]
    w.drop_everything(True)
    w.clock.advance(1)
    still = check(await c.get(JOBS, headers=auth("user001")))
    assert still.status_code == 200
    assert "fwd=stale" in still.headers["cache-status"]


async def test_past_the_window_the_client_gets_slurmrestd_s_500(
    world: tuple[World, httpx.AsyncClient],
) -> None:
    w, c = world
    assert (await c.get(JOBS, headers=auth("user001"))).status_code == 200
    w.drop_everything(True)
    w.clock.advance(100)  # ttl 5 + stale_if_error 60 are over
    r = check(await c.get(JOBS, headers=auth("user001")))
    assert r.status_code == 500
    body: dict[str, Any] = r.json()
    assert body["errors"][0]["error"] == HARD_DROP_TEXT
    assert "fwd=miss" in r.headers["cache-status"]


async def test_a_burst_against_a_short_queue_is_never_the_proxy_s_fault() -> None:
    """40 users at once, a queue of 2, a slow controller: each answer is a
    200 or slurmrestd's own 500 (1805), never one of the proxy's."""
    with started(style="24.11", rpc_queue_hard_drop=2, cost_model="realistic") as sim:
        async with httpx.AsyncClient(base_url=sim.url, timeout=60) as c:
            answers = await asyncio.gather(
                *(c.get("/slurm/v0.0.42/jobs", headers=auth(f"user{i:03d}")) for i in range(1, 41))
            )
    codes = {r.status_code for r in answers}
    assert codes <= {200, 500}
    for r in answers:
        if r.status_code == 500:
            assert r.json()["errors"][0]["error_number"] == HARD_DROP


def test_only_error_1805_counts_as_a_drop() -> None:
    """22.05 refuses a token with a 500 (-1, "Unspecified error"): that one
    must never let a stale entry stand in."""
    refusal = b'{"errors": [{"error_number": -1, "error": "Unspecified error"}]}'
    assert not policy.controller_dropped(500, refusal)
    assert not policy.controller_dropped(500, b'{"errors": [{"error_number": 18050}]}')
    drop = b'{"errors": [{"error_number": 1805, "error": "' + HARD_DROP_TEXT.encode() + b'"}]}'
    assert policy.controller_dropped(500, drop)
    assert not policy.controller_dropped(200, drop)
