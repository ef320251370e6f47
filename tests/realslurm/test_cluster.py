"""The harness and the upstream facts the end-to-end tests stand on, checked directly.

Why: when an end-to-end test fails, these say whether the premise (the
daemon's behaviour, the cluster's set-up) still holds, so a failure there is
the proxy's and not a change in Slurm or in the machine.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.realslurm import cluster as cluster_mod
from tests.realslurm.cluster import API, ClusterUnavailable, RealSlurmCluster

pytestmark = pytest.mark.realslurm

V = f"/slurm/{API}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_second_cluster_starts_and_stops_cleanly(cluster: RealSlurmCluster) -> None:
    """A second cluster runs beside the first (nothing shared) and, once
    stopped, leaves no process, port or directory behind."""
    other = RealSlurmCluster(users=cluster.users)
    with other:
        assert other.rest_port != cluster.rest_port
        status, _, body = other.request("GET", f"{V}/ping", "cpalice")
        assert status == 200, body
        pids = list(other.pids.values())
        assert sorted(other.pids) == ["munged", "slurmctld", "slurmd", "slurmrestd"]
        root = other.root_dir
    assert not any(_alive(pid) for pid in pids)
    assert not root.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", other.rest_port)) != 0
    # The first cluster did not notice.
    assert cluster.request("GET", f"{V}/ping", "cpalice")[0] == 200


def test_private_data_jobs_upstream(
    cluster: RealSlurmCluster, held_job: Callable[..., int]
) -> None:
    """PrivateData=jobs: each user sees only their own jobs, root sees all."""
    a, b = held_job("cpalice"), held_job("cpbob")

    def ids(user: str) -> set[int]:
        status, _, body = cluster.request("GET", f"{V}/jobs", user)
        assert status == 200, body
        return {int(j["job_id"]) for j in json.loads(body)["jobs"]}

    assert a in ids("cpalice")
    assert b not in ids("cpalice")
    assert b in ids("cpbob")
    assert a not in ids("cpbob")
    assert {a, b} <= ids("root")


def test_upstream_error_shapes(cluster: RealSlurmCluster) -> None:
    """The error answers the isolation tests expect from slurmrestd itself."""
    cases = {
        "no token": ({"X-SLURM-USER-NAME": "cpbob"}, 401, "text/plain"),
        "garbage token": (
            {"X-SLURM-USER-NAME": "cpbob", "X-SLURM-USER-TOKEN": "garbage"},
            500,
            "application/json",
        ),
        "alice's token as bob": (
            {"X-SLURM-USER-NAME": "cpbob", "X-SLURM-USER-TOKEN": cluster.tokens["cpalice"]},
            500,
            "application/json",
        ),
    }
    for label, (hdrs, want_status, want_type) in cases.items():
        req = urllib.request.Request(cluster.url + f"{V}/jobs", headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, headers = resp.status, resp.headers
        except urllib.error.HTTPError as err:
            with err:
                status, headers = err.code, err.headers
        assert status == want_status, label
        assert headers["Content-Type"] == want_type, label
        assert headers["Connection"] == "Close", label
    status, headers, body = cluster.request("GET", f"{V}/no-such-thing", "cpalice")
    assert (status, headers["content-type"]) == (404, "text/plain")
    assert body.startswith(b"Unable find requested URL")


def test_job_info_counter_counts_each_get(cluster: RealSlurmCluster) -> None:
    """slurmctld's REQUEST_JOB_INFO counter moves by exactly one per GET /jobs
    and not at all for diag: the coalescing test's measuring stick."""

    def count() -> int:
        status, _, body = cluster.request("GET", f"{V}/diag", "root")
        assert status == 200, body
        rows = json.loads(body)["statistics"]["rpcs_by_message_type"]
        return next((r["count"] for r in rows if r["message_type"] == "REQUEST_JOB_INFO"), 0)

    start = count()
    assert count() == start
    for _ in range(3):
        cluster.request("GET", f"{V}/jobs", "cpalice")
    assert count() == start + 3


def test_missing_packages_without_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root and not installed: a ClusterUnavailable that says what to do
    (the session fixture turns it into a failure, or a skip when asked)."""
    monkeypatch.setattr(cluster_mod, "missing_packages", lambda packages=(): ["slurmrestd"])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="cannot install") as err:
        cluster_mod.ensure_installed()
    assert "apt-get install -y slurmctld slurmd slurmrestd" in str(err.value)
    assert "CACHEPROXY_SKIP_REALSLURM=1" in str(err.value)
