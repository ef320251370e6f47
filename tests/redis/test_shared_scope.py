"""Shared views across replicas sharing one real Redis:

* no user ever receives another user's private data through any replica
  (the simulator private for a word, the proxies told so);
* read-your-writes with sharing: after alice's submit or cancel returns,
  bob's next ``/jobs`` through any replica reflects it.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.redis.conftest import Site
from tests.scope import leakcheck

JOBS = "/slurm/v0.0.43/jobs"


def _sim_args(word: str) -> tuple[str, ...]:
    coordinator = f"{leakcheck.COORDINATOR[0]}={','.join(leakcheck.COORDINATOR[1])}"
    return (
        "--private-data", word,
        "--operator", leakcheck.OPERATOR,
        "--coordinator", coordinator,
    )  # fmt: skip


@pytest.mark.parametrize("word", ["jobs", "nodes,partitions,reservations", "users,accounts"])
def test_no_leak_across_replicas(site: Callable[..., Site], word: str) -> None:
    s = site(
        replicas=2,
        cost_model="none",
        jobs=40,
        sim_args=_sim_args(word),
        proxy_args=("--private-data", word),
    )
    with httpx.Client(base_url=s.sim.url, timeout=30) as direct:
        jobs = direct.get(JOBS, headers=leakcheck.auth("root")).json()["jobs"]
        first = jobs[0]
        own = first["job_id"]
        other = next(j["job_id"] for j in jobs if j["user_name"] != first["user_name"])
        targets = leakcheck.paths(own, other)
        expected = leakcheck.truth(direct, leakcheck.USERS, targets)
    clients = [httpx.Client(base_url=r.url, timeout=30) for r in s.replicas]
    try:
        hits: set[str] = set()
        wrong = leakcheck.leaks(clients, expected, leakcheck.USERS, targets, shared_hits=hits)
    finally:
        for c in clients:
            c.close()
    assert wrong == []
    stored = {t for t in targets[1:] if expected[("root", t)][0] == 200}
    assert hits == leakcheck.shared_targets(targets, word) & stored


def _job_state(client: httpx.Client, user: str, job_id: int) -> list[str] | None:
    r = client.get(JOBS, headers=leakcheck.auth(user))
    assert r.status_code == 200
    for job in r.json()["jobs"]:
        if job["job_id"] == job_id:
            state: list[str] = job["job_state"]
            return state
    return None


def test_read_your_writes_with_sharing_across_replicas(site: Callable[..., Site]) -> None:
    s = site(replicas=2, cost_model="none", jobs=40, proxy_args=("--private-data", "none"))
    r0, r1 = (httpx.Client(base_url=r.url, timeout=30) for r in s.replicas)
    alice, bob = "user001", "user002"
    try:
        for c in (r0, r1):  # both accepted, the shared /jobs filled on both replicas
            for user in (alice, bob):
                assert c.get(JOBS, headers=leakcheck.auth(user)).status_code == 200
        hit = r1.get(JOBS, headers=leakcheck.auth(bob))
        assert hit.headers["cache-status"].startswith("cacheproxy; hit")
        submit = {
            "job": {
                "script": "#!/bin/sh\ntrue\n",
                "environment": ["PATH=/bin"],
                "name": "ryw",
                "current_working_directory": "/tmp",
            }
        }
        r = r0.post("/slurm/v0.0.43/job/submit", json=submit, headers=leakcheck.auth(alice))
        assert r.status_code == 200, r.text
        job_id = r.json()["job_id"]
        for c in (r1, r0):
            assert _job_state(c, bob, job_id) == ["PENDING"]
        r = r1.delete(f"/slurm/v0.0.43/job/{job_id}", headers=leakcheck.auth(alice))
        assert r.status_code == 200, r.text
        for c in (r0, r1):
            assert _job_state(c, bob, job_id) == ["CANCELLED"]
    finally:
        r0.close()
        r1.close()
