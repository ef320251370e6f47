"""Writes are visible to later reads, with slurmrestd's status codes."""

from __future__ import annotations

import httpx
import pytest

from tests.simulator.conftest import ROOT, Running, auth

SUBMIT_38 = {
    "script": "#!/bin/bash\nsleep 30\n",
    "job": {
        "name": "sim-test",
        "environment": {"PATH": "/usr/bin:/bin"},
        "current_working_directory": "/tmp",
    },
}


def _job_ids(body: dict[str, object]) -> set[int]:
    jobs = body["jobs"]
    assert isinstance(jobs, list)
    return {j["job_id"] for j in jobs}


def test_submit_v38_then_listed_and_pending(client: httpx.Client) -> None:
    r = client.post("/slurm/v0.0.38/job/submit", json=SUBMIT_38, headers=auth("user003"))
    assert r.status_code == 200, r.text
    body = r.json()
    job_id = body["job_id"]
    assert body["step_id"] == "BATCH"
    assert body["errors"] == []
    assert job_id in _job_ids(client.get("/slurm/v0.0.38/jobs", headers=ROOT).json())
    job = client.get(f"/slurm/v0.0.38/job/{job_id}", headers=ROOT).json()["jobs"][0]
    assert job["job_state"] == "PENDING"
    assert job["user_name"] == "user003"
    assert job["name"] == "sim-test"
    assert job["current_working_directory"] == "/tmp"
    # the same job under the 25.x shapes
    job43 = client.get(f"/slurm/v0.0.43/job/{job_id}", headers=ROOT).json()["jobs"][0]
    assert job43["job_state"] == ["PENDING"]
    assert job43["submit_time"]["set"] is True


def test_submit_v38_environment_rules(client: httpx.Client) -> None:
    bad = {
        "script": "#!/bin/sh\n",
        "job": {"environment": ["PATH=/bin"], "current_working_directory": "/"},
    }
    r = client.post("/slurm/v0.0.38/job/submit", json=bad, headers=ROOT)
    assert r.status_code == 400
    assert r.headers["connection"].lower() == "close"
    missing = {"script": "#!/bin/sh\n", "job": {"current_working_directory": "/"}}
    r = client.post("/slurm/v0.0.38/job/submit", json=missing, headers=ROOT)
    assert r.status_code == 400
    assert r.json()["errors"][0]["error_number"] == 2127
    part = {"script": "#!/bin/sh\n", "job": {"environment": {"A": "1"}, "partition": "nope"}}
    r = client.post("/slurm/v0.0.38/job/submit", json=part, headers=ROOT)
    assert r.status_code == 500
    assert r.json()["errors"][0]["error_number"] == 2000


def test_submit_25x_job_object(client: httpx.Client) -> None:
    req = {
        "job": {
            "script": "#!/bin/sh\ntrue\n",
            "environment": ["PATH=/bin"],
            "name": "x",
            "current_working_directory": "/tmp",
        }
    }
    r = client.post("/slurm/v0.0.44/job/submit", json=req, headers=auth("user010"))
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    r = client.get("/slurm/v0.0.44/jobs", headers=auth("user010"))
    assert job_id in _job_ids(r.json())


def test_cancel_then_cancelled_everywhere(client: httpx.Client, sim: Running) -> None:
    job_id = client.post(
        "/slurm/v0.0.38/job/submit", json=SUBMIT_38, headers=auth("user005")
    ).json()["job_id"]
    r = client.delete(f"/slurm/v0.0.38/job/{job_id}", headers=auth("user005"))
    assert r.status_code == 200
    assert r.json()["errors"] == []
    job = client.get(f"/slurm/v0.0.38/job/{job_id}", headers=ROOT).json()["jobs"][0]
    assert job["job_state"] == "CANCELLED"
    listed = [
        j
        for j in client.get("/slurm/v0.0.43/jobs", headers=ROOT).json()["jobs"]
        if j["job_id"] == job_id
    ]
    assert listed[0]["job_state"] == ["CANCELLED"]
    db = client.get(f"/slurmdb/v0.0.38/job/{job_id}", headers=ROOT).json()["jobs"][0]
    assert db["state"]["current"] == "CANCELLED"
    # cancelling again is fine, as on a real daemon
    assert client.delete(f"/slurm/v0.0.38/job/{job_id}", headers=auth("user005")).status_code == 200


def test_cancel_someone_elses_job_is_denied(client: httpx.Client) -> None:
    job_id = client.post(
        "/slurm/v0.0.38/job/submit", json=SUBMIT_38, headers=auth("user005")
    ).json()["job_id"]
    r = client.delete(f"/slurm/v0.0.38/job/{job_id}", headers=auth("user006"))
    assert r.status_code == 500
    assert r.json()["errors"][0]["error_number"] == 2002
    r = client.delete(f"/slurm/v0.0.43/job/{job_id}", headers=auth("user006"))
    assert r.status_code == 500
    assert (
        client.get(f"/slurm/v0.0.38/job/{job_id}", headers=ROOT).json()["jobs"][0]["job_state"]
        == "PENDING"
    )


def test_unknown_job(client: httpx.Client) -> None:
    r = client.get("/slurm/v0.0.38/job/999999", headers=ROOT)
    assert r.status_code == 500
    assert r.json()["errors"][0] == {
        "description": "Unable to find JobId=999999",
        "error_number": 2017,
        "error": "Invalid job id specified",
        "source": "slurm_load_job",
    }
    r = client.get("/slurm/v0.0.43/job/999999", headers=ROOT)
    assert r.status_code == 404
    assert r.json()["jobs"] == []
    assert client.delete("/slurm/v0.0.38/job/999999", headers=ROOT).status_code == 500


def test_job_update(client: httpx.Client) -> None:
    job_id = client.post(
        "/slurm/v0.0.38/job/submit", json=SUBMIT_38, headers=auth("user005")
    ).json()["job_id"]
    r = client.post(
        f"/slurm/v0.0.38/job/{job_id}",
        json={"time_limit": 17, "comment": "hi"},
        headers=auth("user005"),
    )
    assert r.status_code == 200, r.text
    job = client.get(f"/slurm/v0.0.38/job/{job_id}", headers=ROOT).json()["jobs"][0]
    assert job["time_limit"] == 17
    assert job["comment"] == "hi"
    r = client.post(
        f"/slurm/v0.0.44/job/{job_id}",
        json={"job": {"time_limit": {"number": 20, "set": True}}},
        headers=ROOT,
    )
    assert r.status_code == 200
    assert (
        client.get(f"/slurm/v0.0.44/job/{job_id}", headers=ROOT).json()["jobs"][0]["time_limit"][
            "number"
        ]
        == 20
    )


def test_node_update_25x(client: httpx.Client) -> None:
    r = client.post(
        "/slurm/v0.0.43/node/cn002", json={"state": ["DRAIN"], "reason": "test"}, headers=ROOT
    )
    assert r.status_code == 200, r.text
    node = client.get("/slurm/v0.0.43/node/cn002", headers=ROOT).json()["nodes"][0]
    assert "DRAIN" in node["state"]
    assert node["reason"] == "test"
    node38 = client.get("/slurm/v0.0.38/node/cn002", headers=ROOT).json()["nodes"][0]
    assert node38["state_flags"] == ["DRAIN"]
    # not an operation of v0.0.38, and only admins may do it
    assert client.post("/slurm/v0.0.38/node/cn002", json={}, headers=ROOT).status_code == 404
    r = client.post(
        "/slurm/v0.0.43/node/cn002", json={"state": ["RESUME"]}, headers=auth("user001")
    )
    assert r.status_code == 500


def test_reservations_25x(client: httpx.Client) -> None:
    req = {"reservations": [{"name": "simres", "node_list": "cn001,cn002", "users": ["root"]}]}
    r = client.post("/slurm/v0.0.44/reservations", json=req, headers=ROOT)
    assert r.status_code == 200, r.text
    names = {
        x["name"]
        for x in client.get("/slurm/v0.0.38/reservations", headers=ROOT).json()["reservations"]
    }
    assert "simres" in names
    assert client.delete("/slurm/v0.0.44/reservation/simres", headers=ROOT).status_code == 200
    r = client.get("/slurm/v0.0.44/reservation/simres", headers=ROOT)
    assert r.status_code == 422  # "Unable to find reservation" (test_error_views.py)


def test_delete_jobs_25x(client: httpx.Client) -> None:
    ids = [
        client.post("/slurm/v0.0.38/job/submit", json=SUBMIT_38, headers=auth("user008")).json()[
            "job_id"
        ]
        for _ in range(2)
    ]
    r = client.request(
        "DELETE",
        "/slurm/v0.0.43/jobs",
        json={"jobs": [str(i) for i in ids]},
        headers=auth("user008"),
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["status"]) == 2
    for i in ids:
        assert client.get(f"/slurm/v0.0.43/job/{i}", headers=ROOT).json()["jobs"][0][
            "job_state"
        ] == ["CANCELLED"]


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.43"])
def test_slurmdb_writes(client: httpx.Client, version: str) -> None:
    r = client.post(
        f"/slurmdb/{version}/accounts",
        json={"accounts": [{"name": "newacct", "description": "d", "organization": "o"}]},
        headers=ROOT,
    )
    assert r.status_code == 200, r.text
    names = {
        a["name"]
        for a in client.get(f"/slurmdb/{version}/accounts", headers=ROOT).json()["accounts"]
    }
    assert "newacct" in names
    r = client.post(
        f"/slurmdb/{version}/users",
        json={"users": [{"name": "newuser", "default": {"account": "newacct"}}]},
        headers=ROOT,
    )
    assert r.status_code == 200
    assert (
        client.get(f"/slurmdb/{version}/user/newuser", headers=ROOT).json()["users"][0]["name"]
        == "newuser"
    )
    r = client.post(
        f"/slurmdb/{version}/associations",
        json={"associations": [{"account": "acct02", "user": "newuser"}]},
        headers=ROOT,
    )
    assert r.status_code == 200
    assoc = client.get(f"/slurmdb/{version}/associations?user=newuser", headers=ROOT).json()[
        "associations"
    ]
    assert {a["account"] for a in assoc} == {"newacct", "acct02"}
    r = client.post(f"/slurmdb/{version}/qos", json={"qos": [{"name": "premium"}]}, headers=ROOT)
    assert r.status_code == 200
    assert "premium" in {
        q["name"] for q in client.get(f"/slurmdb/{version}/qos", headers=ROOT).json()["qos"]
    }
    assert client.delete(f"/slurmdb/{version}/user/newuser", headers=ROOT).status_code == 200
    assert client.get(f"/slurmdb/{version}/user/newuser", headers=ROOT).json()["users"] == []
    assert client.delete(f"/slurmdb/{version}/account/newacct", headers=ROOT).status_code == 200
    # a plain user may not write accounting
    r = client.post(
        f"/slurmdb/{version}/qos", json={"qos": [{"name": "x"}]}, headers=auth("user001")
    )
    assert r.status_code == 500


def test_slurmdb_admin_only_reads(client: httpx.Client) -> None:
    for path in ("config", "diag", "wckeys"):
        r = client.get(f"/slurmdb/v0.0.38/{path}", headers=auth("user001"))
        assert r.status_code == 500
        assert r.json()["errors"][0]["error_number"] == 2002
        assert client.get(f"/slurmdb/v0.0.38/{path}", headers=ROOT).status_code == 200


def test_malformed_json_is_400(client: httpx.Client) -> None:
    r = client.post(
        "/slurm/v0.0.38/job/submit",
        content=b"{not json",
        headers={**ROOT, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.text == "Unable to parse query."
    assert r.headers["connection"].lower() == "close"


def test_2205_write_bodies_have_the_live_sizes(client: httpx.Client) -> None:
    """Live 22.05: submit answered 335 B (job id 2), cancel 269 B."""
    r = client.post("/slurm/v0.0.38/job/submit", json=SUBMIT_38, headers=ROOT)
    job_id = r.json()["job_id"]
    assert len(r.content) == 335 + len(str(job_id)) - 1
    assert int(r.headers["content-length"]) == len(r.content)
    r = client.delete(f"/slurm/v0.0.38/job/{job_id}", headers=ROOT)
    assert len(r.content) == 269
