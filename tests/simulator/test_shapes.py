"""Body shapes, sizes, meta.client and path handling."""

from __future__ import annotations

import json
import statistics

import httpx
import pytest

from tests.simulator.conftest import ROOT, Running, auth, started


def _compact(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


def test_2205_envelope_and_escaping(client: httpx.Client) -> None:
    r = client.get("/slurm/v0.0.38/jobs", headers=ROOT)
    text = r.text
    assert text.startswith('{\n  "meta": {\n    "plugin": {\n      "type": "openapi\\/v0.0.38"')
    assert '"errors": [\n  ],' in text
    body = r.json()
    assert list(body) == ["meta", "errors", "jobs"]
    job = body["jobs"][0]
    assert len(job) == 111
    assert isinstance(job["job_state"], str)
    assert "client" not in body["meta"]
    assert "/" not in text.replace("\\/", "")


def test_25x_envelope(client: httpx.Client) -> None:
    body = client.get("/slurm/v0.0.43/jobs", headers=ROOT).json()
    assert list(body) == ["jobs", "last_backfill", "last_update", "meta", "errors", "warnings"]
    job = body["jobs"][0]
    assert len(job) == 133
    assert isinstance(job["job_state"], list)
    assert set(job["priority"]) == {"set", "infinite", "number"}
    v44 = client.get("/slurm/v0.0.44/jobs", headers=ROOT).json()["jobs"][0]
    assert "submit_line" in v44
    assert "step_id" in v44
    assert body["meta"]["plugin"]["data_parser"] == "data_parser/v0.0.43"


def test_meta_client_per_requester(sim: Running) -> None:
    """Only ``source`` (the connection) differs per requester.

    slurmrestd sets ``query_meta.client.source`` per request and nothing else
    (src/slurmrestd/openapi.c, 23.11.0 to master): the slurmctld plugin's
    ``plugin_meta`` leaves uid/gid 0 ("root"), the slurmdbd plugin's sets
    ``SLURM_AUTH_NOBODY`` (99: "" up to 25.05, "nobody" from 25.11 on, which
    names it), as the recorded 25.05/25.11 examples show.
    """
    with sim.client() as a, sim.client() as b:
        ma = a.get("/slurm/v0.0.43/ping", headers=auth("user001")).json()["meta"]["client"]
        mb = b.get("/slurm/v0.0.43/ping", headers=auth("user002")).json()["meta"]["client"]
        ma2 = a.get("/slurm/v0.0.43/jobs", headers=auth("user001")).json()["meta"]["client"]
        db43 = a.get("/slurmdb/v0.0.43/qos", headers=auth("user001")).json()["meta"]["client"]
        db44 = a.get("/slurmdb/v0.0.44/qos", headers=auth("user001")).json()["meta"]["client"]
        m40 = a.get("/slurm/v0.0.40/ping", headers=auth("user003")).json()["meta"]["client"]
    assert (ma["user"], ma["group"]) == (mb["user"], mb["group"]) == ("root", "root")
    assert (m40["user"], m40["group"]) == ("root", "root")
    assert (db43["user"], db43["group"]) == ("", "")
    assert (db44["user"], db44["group"]) == ("nobody", "")
    assert ma["source"].startswith("127.0.0.1:")
    assert "(fd:" in ma["source"]
    assert ma["source"] != mb["source"]  # two connections
    assert ma2["source"] == ma["source"]  # same keep-alive connection


def test_sizes_are_realistic() -> None:
    with started(jobs=400, nodes=100) as running, running.client() as c:
        j38 = c.get("/slurm/v0.0.38/jobs", headers=ROOT).json()["jobs"]
        j43 = c.get("/slurm/v0.0.43/jobs", headers=ROOT).json()["jobs"]
        nodes = c.get("/slurm/v0.0.43/nodes", headers=ROOT).json()["nodes"]
    assert len(j38) == len(j43) == 400
    mean38 = statistics.mean(_compact(j) for j in j38)
    mean43 = statistics.mean(_compact(j) for j in j43)
    assert 2000 < mean38 < 3500, mean38
    assert 5500 < mean43 < 8500, mean43
    assert 1200 < statistics.mean(_compact(n) for n in nodes) < 2200


@pytest.mark.parametrize(
    "path",
    [
        "/slurm/v0.0.38/jobs/",
        "//slurm//v0.0.38//jobs",
        "/slurm/v0.0.38/%6Aobs",
        "/slurm/v0.0.38/jobs///",
    ],
)
def test_path_normalisation(client: httpx.Client, sim: Running, path: str) -> None:
    plain = client.get("/slurm/v0.0.38/jobs", headers=ROOT)
    # raw_path: httpx would otherwise read "//slurm" as a host name
    other = client.get(httpx.URL(sim.url).copy_with(raw_path=path.encode()), headers=ROOT)
    assert other.status_code == 200
    assert other.content == plain.content


def test_job_array_forms(client: httpx.Client, sim: Running) -> None:
    task = next(j for j in sim.app.cluster.jobs.values() if j.array_task_id is not None)
    r = client.get(f"/slurm/v0.0.38/job/{task.array_job_id}_{task.array_task_id}", headers=ROOT)
    assert r.status_code == 200
    assert [j["job_id"] for j in r.json()["jobs"]] == [task.job_id]
    r = client.get(f"/slurm/v0.0.43/job/{task.array_job_id}_{task.array_task_id}", headers=ROOT)
    body = r.json()
    assert len(body["jobs"]) > 1  # 25.x shows the whole array, with a warning
    assert body["warnings"]


@pytest.mark.parametrize(
    "path",
    [
        "/slurm/v0.0.99/ping",
        "/slurm/v0.0.38/shares",
        "/slurm/v0.0.38/jobs/state",
        "/nothing",
        "/slurm/v0.0.38/job/1/extra",
    ],
)
def test_unknown_paths_404_text(client: httpx.Client, path: str) -> None:
    r = client.get(path, headers=ROOT)
    assert r.status_code == 404
    assert r.headers["content-type"] == "text/plain"
    assert r.text == "Unable find requested URL. Please view /openapi/v3 for API reference."
    assert r.headers["connection"].lower() == "close"


def test_style_limits_versions() -> None:
    with started(style="22.05") as running, running.client() as c:
        assert c.get("/slurm/v0.0.38/ping", headers=ROOT).status_code == 200
        assert c.get("/slurm/v0.0.43/ping", headers=ROOT).status_code == 404
    with started(style="25.x") as running, running.client() as c:
        assert c.get("/slurm/v0.0.44/ping", headers=ROOT).status_code == 200
        assert c.get("/slurm/v0.0.38/ping", headers=ROOT).status_code == 404


def test_every_get_answers(client: httpx.Client, sim: Running) -> None:
    job = next(iter(sim.app.cluster.jobs.values()))
    for v in ("v0.0.38", "v0.0.43", "v0.0.44"):
        paths = [
            "/slurm/{v}/ping",
            "/slurm/{v}/diag",
            "/slurm/{v}/jobs",
            f"/slurm/{{v}}/job/{job.job_id}",
            "/slurm/{v}/nodes",
            "/slurm/{v}/node/cn001",
            "/slurm/{v}/partitions",
            "/slurm/{v}/partition/normal",
            "/slurm/{v}/reservations",
            "/slurm/{v}/reservation/maint",
            "/slurm/{v}/licenses",
            "/slurmdb/{v}/jobs",
            f"/slurmdb/{{v}}/job/{job.job_id}",
            "/slurmdb/{v}/users",
            "/slurmdb/{v}/user/user001",
            "/slurmdb/{v}/accounts",
            "/slurmdb/{v}/account/acct01",
            "/slurmdb/{v}/associations",
            "/slurmdb/{v}/qos",
            "/slurmdb/{v}/tres",
            "/slurmdb/{v}/clusters",
            "/slurmdb/{v}/wckeys",
            "/slurmdb/{v}/config",
            "/slurmdb/{v}/diag",
        ]
        if v != "v0.0.38":
            paths += ["/slurm/{v}/jobs/state", "/slurm/{v}/shares", "/slurmdb/{v}/ping"]
        for p in paths:
            r = client.get(p.format(v=v), headers=ROOT)
            assert r.status_code == 200, (p, v, r.text[:300])
            assert r.json()["errors"] == [], (p, v)


def test_reconfigure_is_a_get_with_effect(client: httpx.Client, sim: Running) -> None:
    before = sim.app.cluster.gen["partitions"]
    assert client.get("/slurm/v0.0.44/reconfigure", headers=ROOT).status_code == 200
    assert sim.app.cluster.gen["partitions"] > before
    assert client.get("/slurm/v0.0.44/reconfigure", headers=auth("user001")).status_code == 500


def test_unknown_node_shapes(client: httpx.Client) -> None:
    r = client.get("/slurm/v0.0.38/node/nope", headers=ROOT)
    assert r.status_code == 500
    assert r.json()["errors"] == [{"error": "Invalid node name specified", "errno": 2018}]
    r = client.get("/slurm/v0.0.43/node/nope", headers=ROOT)
    assert r.status_code == 200
    body = r.json()
    assert "nodes" not in body
    assert body["errors"]
    assert list(body) == ["errors", "warnings", "meta"]


def test_head_is_411(client: httpx.Client) -> None:
    r = client.head("/slurm/v0.0.38/ping", headers=ROOT)
    assert r.status_code == 411
