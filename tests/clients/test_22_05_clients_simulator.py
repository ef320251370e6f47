"""The 22.05 clients against the simulator (``--style 22.05``), directly and
through the proxy: ``openapi-slurm-0-0-38-client`` (v0.0.38) and SchedMD's
``slurm-rest`` (v0.0.37 and dbv0.0.37).

tests/realslurm/test_clients.py runs the same clients against the real
22.05; here the simulator must give them what the real daemon gives: every
read the client deserializes from the real one it deserializes from the
simulator, equal directly and through the proxy, a hit when repeated; what
the client cannot read from the real daemon it cannot read here either
(:data:`CLIENT_FAILS`, the same list, plus :data:`EMPTY_ON_THE_REAL_TEST_DB`),
and a submit through the proxy appears in the next list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients.compare import check_reads, errors_of, is_hit, long_ttl_rules
from tests.clients.venvs import client_python, run_client
from tests.realslurm.test_clients import CLIENT_FAILS
from tests.simulator.conftest import ROOT, Running, started
from tests.simulator.proxied import proxy_in_front

#: Reads slurm-rest fails on here but not against tests/realslurm's database,
#: only because that database holds no QOS and no job in ``/jobs``' default
#: window: dbv0.0.37's parse.c dumps a QOS ``id`` and a job's ``het/job_id``
#: as integers (``_dump_to_uint32``), which the client's spec declares a
#: string and an object. The real daemon's one job (``db_job``, in
#: CLIENT_FAILS) fails on ``het/job_id`` the same way.
EMPTY_ON_THE_REAL_TEST_DB = frozenset({"db_jobs", "db_qos", "db_single_qos"})
USER = "root"
TOKEN = "sim-token-root"


@pytest.fixture(scope="module")
def sim() -> Iterator[Running]:
    with started(style="22.05") as running:
        yield running


@pytest.fixture(scope="module")
def proxy(sim: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("clients-22-05-proxy")
    rules = long_ttl_rules(tmp)
    with proxy_in_front(sim.url, tmp / "proxy.log", "--config", str(rules)) as url:
        yield url


def names(sim: Running) -> dict[str, Any]:
    """A job, a node, a partition and a reservation the simulator holds."""
    with sim.client(headers=ROOT) as c:
        return {
            "job": c.get("/slurm/v0.0.38/jobs").json()["jobs"][0]["job_id"],
            "node": c.get("/slurm/v0.0.38/nodes").json()["nodes"][0]["name"],
            "partition": c.get("/slurm/v0.0.38/partitions").json()["partitions"][0]["name"],
            "reservation": c.get("/slurm/v0.0.38/reservations").json()["reservations"][0]["name"],
            "db_job": c.get("/slurmdb/v0.0.37/jobs").json()["jobs"][0]["job_id"],
            "account": c.get("/slurmdb/v0.0.37/accounts").json()["accounts"][0]["name"],
            "cluster": c.get("/slurmdb/v0.0.37/clusters").json()["clusters"][0]["name"],
            "qos": c.get("/slurmdb/v0.0.37/qos").json()["qos"][0]["name"],
        }


def submission(name: str) -> dict[str, Any]:
    """A v0.0.37/38 submission as 22.05 wants it (``environment`` an object)."""
    return {
        "script": "#!/bin/sh\nsleep 600\n",
        "job": {
            "name": name,
            "current_working_directory": "/tmp",
            "environment": {"PATH": "/usr/bin:/bin"},
        },
    }


# -- openapi-slurm-0-0-38-client (v0.0.38) -----------------------------------


@pytest.fixture(scope="module")
def openapi38() -> Path:
    return client_python("openapi-slurm-0-0-38-client")


def run38(python: Path, url: str, **req: Any) -> Any:
    request = {
        "package": "openapi_client",
        "apis": {"slurm": "SlurmApi"},
        "url": url,
        "user": USER,
        "token": TOKEN,
        "calls": [],
        **req,
    }
    return run_client(python, "generated_client.py", request)


def test_openapi38_reads_the_same_directly_and_through_the_proxy(
    openapi38: Path, sim: Running, proxy: str
) -> None:
    n = names(sim)
    calls = [
        ["ping", "slurm", "slurm_v0038_ping", {}],
        ["diag", "slurm", "slurm_v0038_diag", {}],
        ["jobs", "slurm", "slurm_v0038_get_jobs", {}],
        ["job", "slurm", "slurm_v0038_get_job", {"job_id": str(n["job"])}],
        ["nodes", "slurm", "slurm_v0038_get_nodes", {}],
        ["node", "slurm", "slurm_v0038_get_node", {"node_name": n["node"]}],
        ["partitions", "slurm", "slurm_v0038_get_partitions", {}],
        ["partition", "slurm", "slurm_v0038_get_partition", {"partition_name": n["partition"]}],
        ["reservations", "slurm", "slurm_v0038_get_reservations", {}],
        [
            "reservation",
            "slurm",
            "slurm_v0038_get_reservation",
            {"reservation_name": n["reservation"]},
        ],
        ["licenses", "slurm", "slurm_v0038_slurmctld_get_licenses", {}],
    ]
    check_reads(
        lambda url: run38(openapi38, url, calls=calls), sim.url, proxy, [c[0] for c in calls]
    )


def test_openapi38_submit_through_the_proxy_appears_in_the_next_list(
    openapi38: Path, sim: Running, proxy: str
) -> None:
    listing = [["jobs", "slurm", "slurm_v0038_get_jobs", {}]]
    run38(openapi38, proxy, calls=listing)
    cached = run38(openapi38, proxy, calls=listing)["calls"]["jobs"]
    assert is_hit(cached["headers"]), "premise: /jobs cached before the submit"
    submit = ["slurm", "slurm_v0038_submit_job", "V0038JobSubmission", submission("oa38-sim")]
    job_id = run38(openapi38, proxy, submit=submit)["submitted"]
    assert isinstance(job_id, int)
    seen = run38(
        openapi38,
        proxy,
        calls=[*listing, ["missing", "slurm", "slurm_v0038_get_job", {"job_id": "999999"}]],
    )["calls"]
    assert job_id in {j["job_id"] for j in seen["jobs"]["data"]["jobs"]}
    assert seen["missing"]["status"] == 500, seen["missing"]  # 22.05: ESLURM_INVALID_JOB_ID


# -- slurm-rest (v0.0.37, dbv0.0.37) ------------------------------------------


@pytest.fixture(scope="module")
def slurm_rest() -> Path:
    return client_python("slurm-rest")


def run37(python: Path, url: str, **req: Any) -> Any:
    request = {"url": url, "user": USER, "token": TOKEN, "calls": [], **req}
    return run_client(python, "slurm_rest_client.py", request)


def test_slurm_rest_reads_as_from_the_real_22_05(
    slurm_rest: Path, sim: Running, proxy: str
) -> None:
    n = names(sim)
    calls = [
        ["ping", "slurmctld_ping", {}],
        ["diag", "slurmctld_diag", {}],
        ["jobs", "slurmctld_get_jobs", {}],
        ["job", "slurmctld_get_job", {"job_id": n["job"]}],
        ["nodes", "slurmctld_get_nodes", {}],
        ["node", "slurmctld_get_node", {"node_name": n["node"]}],
        ["partitions", "slurmctld_get_partitions", {}],
        ["partition", "slurmctld_get_partition", {"partition_name": n["partition"]}],
        ["reservations", "slurmctld_get_reservations", {}],
        ["reservation", "slurmctld_get_reservation", {"reservation_name": n["reservation"]}],
        ["db_diag", "slurmdbd_diag_0", {}],
        ["db_config", "slurmdbd_get_db_config_0", {}],
        ["db_jobs", "slurmdbd_get_jobs_0", {}],
        ["db_job", "slurmdbd_get_job_0", {"job_id": n["db_job"]}],
        ["db_accounts", "slurmdbd_get_accounts_0", {}],
        ["db_account", "slurmdbd_get_account_0", {"account_name": n["account"]}],
        ["db_associations", "slurmdbd_get_associations_0", {}],
        ["db_clusters", "slurmdbd_get_clusters_0", {}],
        ["db_cluster", "slurmdbd_get_cluster_0", {"cluster_name": n["cluster"]}],
        ["db_qos", "slurmdbd_get_qos_0", {}],
        ["db_single_qos", "slurmdbd_get_single_qos_0", {"qos_name": n["qos"]}],
        ["db_tres", "slurmdbd_get_tres_0", {}],
        ["db_users", "slurmdbd_get_users_0", {}],
        ["db_user", "slurmdbd_get_user_0", {"user_name": "root"}],
        ["db_wckeys", "slurmdbd_get_wckeys_0", {}],
    ]
    direct = check_reads(
        lambda url: run37(slurm_rest, url, calls=calls),
        sim.url,
        proxy,
        [c[0] for c in calls],
        CLIENT_FAILS | EMPTY_ON_THE_REAL_TEST_DB,
    )
    failed = set(errors_of(direct))
    assert failed == CLIENT_FAILS | EMPTY_ON_THE_REAL_TEST_DB, "the client's failures changed"
    for label in EMPTY_ON_THE_REAL_TEST_DB:
        assert "Invalid type for variable" in direct[label]["error"], direct[label]


def test_slurm_rest_submit_through_the_proxy_appears_in_the_next_list(
    slurm_rest: Path, sim: Running, proxy: str
) -> None:
    url = f"{proxy}/slurm/v0.0.37/jobs"
    httpx.get(url, headers=ROOT, timeout=30)
    assert is_hit(dict(httpx.get(url, headers=ROOT, timeout=30).headers))
    job_id = run37(slurm_rest, proxy, submit=submission("slurm-rest-sim"))["submitted"]
    seen = httpx.get(url, headers=ROOT, timeout=30)
    assert seen.status_code == 200, seen.text
    assert job_id in {j["job_id"] for j in seen.json()["jobs"]}
