"""``--private-data``: PrivateData=jobs, users see only their own jobs."""

from __future__ import annotations

import httpx

from tests.simulator.conftest import ROOT, Running, auth


def test_each_user_sees_only_own_jobs(private_sim: Running) -> None:
    cluster = private_sim.app.cluster
    owners = {j.user for j in cluster.jobs.values()}
    user = sorted(owners)[0]
    other_job = next(j for j in cluster.jobs.values() if j.user != user)
    with private_sim.client() as c:
        for version in ("v0.0.38", "v0.0.43"):
            mine = c.get(f"/slurm/{version}/jobs", headers=auth(user)).json()["jobs"]
            assert mine
            assert {j["user_name"] for j in mine} == {user}
            assert len(mine) == sum(1 for j in cluster.jobs.values() if j.user == user)
            everything = c.get(f"/slurm/{version}/jobs", headers=ROOT).json()["jobs"]
            assert len(everything) == len(cluster.jobs)
            r = c.get(f"/slurm/{version}/job/{other_job.job_id}", headers=auth(user))
            assert r.status_code in (404, 500)
            assert r.json()["jobs"] == []
        db = c.get("/slurmdb/v0.0.38/jobs", headers=auth(user)).json()["jobs"]
        assert {j["user"] for j in db} == {user}
        assert (
            c.get(f"/slurmdb/v0.0.43/job/{other_job.job_id}", headers=auth(user)).json()["jobs"]
            == []
        )
        # root's token impersonating a user gets that user's view
        as_user = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": "sim-token-root"}
        assert {
            j["user_name"] for j in c.get("/slurm/v0.0.38/jobs", headers=as_user).json()["jobs"]
        } == {user}


def test_without_private_data_everyone_sees_all(client: httpx.Client, sim: Running) -> None:
    jobs = client.get("/slurm/v0.0.38/jobs", headers=auth("user001")).json()["jobs"]
    assert len(jobs) == len(sim.app.cluster.jobs)
