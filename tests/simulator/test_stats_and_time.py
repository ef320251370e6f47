"""``/_sim/`` endpoints: counters, reset, and moving the simulated clock."""

from __future__ import annotations

import httpx
import pytest

from cacheproxy.simulator import SimConfig, Simulator, running_simulator
from tests.simulator.conftest import ROOT, Running, started


def test_counters_by_route_and_reset(client: httpx.Client) -> None:
    client.post("/_sim/reset")
    for _ in range(3):
        client.get("/slurm/v0.0.38/jobs", headers=ROOT)
    client.get("/slurm/v0.0.43/jobs/", headers=ROOT)
    client.get("/slurm/v0.0.43/job/1234", headers=ROOT)
    client.get("/slurmdb/v0.0.38/qos", headers=ROOT)
    client.delete("/slurm/v0.0.38/job/1", headers=ROOT)
    stats = client.get("/_sim/stats").json()
    assert stats["total"] == 7
    assert stats["by_route"]["GET /slurm/{v}/jobs"] == 4
    assert stats["by_route"]["GET /slurm/{v}/job/{job_id}"] == 1
    assert stats["by_route"]["GET /slurmdb/{v}/qos"] == 1
    assert stats["by_route"]["DELETE /slurm/{v}/job/{job_id}"] == 1
    assert stats["by_method"] == {"DELETE": 1, "GET": 6}
    assert isinstance(stats["lock_wait_seconds"], float)
    assert isinstance(stats["busy_seconds"], float)
    reset = client.post("/_sim/reset")
    assert reset.status_code == 200
    assert client.get("/_sim/stats").json()["total"] == 0


def test_cost_model_counts_busy_time() -> None:
    with started(cost_model="realistic", jobs=20, nodes=8) as running, running.client() as c:
        for _ in range(5):
            assert c.get("/slurm/v0.0.38/ping", headers=ROOT).status_code == 200
        assert c.get("/slurmdb/v0.0.38/tres", headers=ROOT).status_code == 200
        stats = c.get("/_sim/stats").json()
    assert stats["busy_seconds"] > 0


def test_cost_is_charged_per_route() -> None:
    """Busy and lock-wait seconds per route add up to the totals (what the
    benchmark reports beside upstream requests)."""
    with started(cost_model="realistic", jobs=20, nodes=8) as running, running.client() as c:
        for _ in range(3):
            c.get("/slurm/v0.0.43/jobs", headers=ROOT)
        c.get("/slurm/v0.0.38/ping", headers=ROOT)
        c.get("/slurmdb/v0.0.43/qos", headers=ROOT)
        c.get("/slurm/v0.0.43/nodes", headers={"X-SLURM-USER-TOKEN": "forged"})
        stats = c.get("/_sim/stats").json()
    busy, wait = stats["busy_by_route"], stats["lock_wait_by_route"]
    assert set(busy) == set(wait) == set(stats["by_route"])
    assert all(busy[k] > 0 for k in busy)
    assert sum(busy.values()) == pytest.approx(stats["busy_seconds"], abs=1e-4)
    assert sum(wait.values()) == pytest.approx(stats["lock_wait_seconds"], abs=1e-4)
    assert busy["GET /slurmdb/{v}/qos"] > busy["GET /slurm/{v}/ping"]  # slurmdbd: 90 ms+


def test_jobs_advance_with_time() -> None:
    with started(job_speed=1.0, jobs=60, nodes=20) as running, running.client() as c:
        r = c.post(
            "/slurm/v0.0.38/job/submit",
            headers=ROOT,
            json={
                "script": "#!/bin/sh\n",
                "job": {"environment": {"A": "1"}, "current_working_directory": "/"},
            },
        )
        job_id = r.json()["job_id"]
        states = []
        for _ in range(20):
            state = c.get(f"/slurm/v0.0.38/job/{job_id}", headers=ROOT).json()["jobs"][0][
                "job_state"
            ]
            if not states or states[-1] != state:
                states.append(state)
            if state in ("COMPLETED", "FAILED", "TIMEOUT"):
                break
            c.post("/_sim/advance", params={"seconds": 900})
        assert states[0] == "PENDING"
        assert "RUNNING" in states
        assert states[-1] in ("COMPLETED", "FAILED", "TIMEOUT")


def test_frozen_jobs_do_not_move(sim: Running, client: httpx.Client) -> None:
    before = {j.job_id: j.state for j in sim.app.cluster.jobs.values()}
    client.post("/_sim/advance", params={"seconds": 100000})
    client.get("/slurm/v0.0.38/jobs", headers=ROOT)
    assert {j.job_id: j.state for j in sim.app.cluster.jobs.values()} == before


def test_running_simulator_helper() -> None:
    with running_simulator(cost_model="none", jobs=10, nodes=4, job_speed=0) as url:
        r = httpx.get(f"{url}/slurm/v0.0.38/ping", headers=ROOT)
        assert r.status_code == 200
        assert r.json()["pings"][0]["ping"] == "UP"


async def test_asgi_app_in_process() -> None:
    app = Simulator(SimConfig(cost_model="none", jobs=10, nodes=4, job_speed=0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
        r = await c.get("/slurm/v0.0.44/jobs", headers=ROOT)
        assert r.status_code == 200
        assert len(r.json()["jobs"]) == 10
        assert (await c.get("/_sim/stats")).json()["total"] == 1
