"""Other people's clients against the real slurmrestd 22.05, directly and through the proxy.

``openapi-slurm-0-0-38-client`` (v0.0.38) and SchedMD's ``slurm-rest``
(v0.0.37 and dbv0.0.37) each run in a venv of their own
(tests/clients/venvs.py: their pins conflict with ours) as a subprocess that
prints what the client deserialized. Each read must deserialize, equal
slurmrestd's own answer apart from ``meta`` (and the controller's moving
samples, :data:`~tests.realslurm.helpers.MASKED_KEYS`), and be a hit when
repeated through the proxy; a submit through the proxy appears in the next
list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients.compare import check_reads as check_reads_masked
from tests.clients.compare import errors_of, is_hit, long_ttl_rules
from tests.clients.venvs import client_python, run_client
from tests.realslurm.cluster import RealSlurmCluster
from tests.realslurm.conftest import ProxyProcess, job_body
from tests.realslurm.helpers import masked

pytestmark = pytest.mark.realslurm

RESERVATION = "clients-resv"


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_ttl_rules(tmp_path_factory.mktemp("client-rules"))


def check_reads(
    run: Callable[[str], Any],
    direct_url: str,
    proxy_url: str,
    labels: list[str],
    may_fail: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """:func:`tests.clients.compare.check_reads`, the controller's moving samples masked."""
    return check_reads_masked(run, direct_url, proxy_url, labels, may_fail, mask=masked)


def with_reservation(cluster: RealSlurmCluster) -> Iterator[str]:
    """A reservation tomorrow on the one node: something for the one-reservation read,
    out of the way of the held jobs the tests submit now."""
    cluster.run(
        [
            "scontrol",
            "create",
            "reservation",
            f"ReservationName={RESERVATION}",
            "StartTime=now+1day",
            "Duration=60",
            "Users=root",
            "Nodes=localhost",
        ]
    )
    try:
        yield RESERVATION
    finally:
        cluster.run(["scontrol", "delete", f"ReservationName={RESERVATION}"])


# -- openapi-slurm-0-0-38-client (v0.0.38) -----------------------------------


@pytest.fixture(scope="module")
def openapi38() -> Path:
    return client_python("openapi-slurm-0-0-38-client")


@pytest.fixture(scope="module")
def proxy38(proxy_factory: Callable[..., ProxyProcess], rules: Path) -> ProxyProcess:
    return proxy_factory("--config", str(rules))


@pytest.fixture(scope="module")
def reservation(cluster: RealSlurmCluster) -> Iterator[str]:
    yield from with_reservation(cluster)


def run38(python: Path, cluster: RealSlurmCluster, url: str, user: str, **req: Any) -> Any:
    request = {
        "package": "openapi_client",
        "apis": {"slurm": "SlurmApi"},
        "url": url,
        "user": user,
        "token": cluster.tokens[user],
        "calls": [],
        **req,
    }
    return run_client(python, "generated_client.py", request)


def test_openapi38_reads_the_same_directly_and_through_the_proxy(
    cluster: RealSlurmCluster,
    openapi38: Path,
    proxy38: ProxyProcess,
    held_job: Callable[..., int],
    reservation: str,
) -> None:
    job = held_job("cpalice", via=proxy38.url)
    calls = [
        ["ping", "slurm", "slurm_v0038_ping", {}],
        ["diag", "slurm", "slurm_v0038_diag", {}],
        ["jobs", "slurm", "slurm_v0038_get_jobs", {}],
        ["job", "slurm", "slurm_v0038_get_job", {"job_id": str(job)}],
        ["nodes", "slurm", "slurm_v0038_get_nodes", {}],
        ["node", "slurm", "slurm_v0038_get_node", {"node_name": "localhost"}],
        ["partitions", "slurm", "slurm_v0038_get_partitions", {}],
        ["partition", "slurm", "slurm_v0038_get_partition", {"partition_name": "debug"}],
        ["reservations", "slurm", "slurm_v0038_get_reservations", {}],
        ["reservation", "slurm", "slurm_v0038_get_reservation", {"reservation_name": reservation}],
        ["licenses", "slurm", "slurm_v0038_slurmctld_get_licenses", {}],
    ]
    check_reads(
        lambda url: run38(openapi38, cluster, url, "cpalice", calls=calls),
        cluster.url,
        proxy38.url,
        [c[0] for c in calls],
    )


def test_openapi38_submit_cancel_and_errors_through_the_proxy(
    cluster: RealSlurmCluster, openapi38: Path, proxy38: ProxyProcess
) -> None:
    """The client's own write calls through the proxy: its submit appears in the
    next (cached before) list, its cancel in the next read of the job; and
    slurmrestd's error still reaches it as its own exception with the 500."""
    listing = [["jobs", "slurm", "slurm_v0038_get_jobs", {}]]
    run38(openapi38, cluster, proxy38.url, "cpalice", calls=listing)
    cached = run38(openapi38, cluster, proxy38.url, "cpalice", calls=listing)["calls"]["jobs"]
    assert is_hit(cached["headers"]), "premise: /jobs cached before the submit"

    body = job_body(cluster, name="client-e2e")
    submit = ["slurm", "slurm_v0038_submit_job", "V0038JobSubmission", body]
    job_id = run38(openapi38, cluster, proxy38.url, "cpalice", submit=submit)["submitted"]
    assert isinstance(job_id, int)
    try:
        seen = run38(
            openapi38,
            cluster,
            proxy38.url,
            "cpalice",
            calls=[*listing, ["job", "slurm", "slurm_v0038_get_job", {"job_id": str(job_id)}]],
        )["calls"]
        assert job_id in {j["job_id"] for j in seen["jobs"]["data"]["jobs"]}
        assert [j["user_name"] for j in seen["job"]["data"]["jobs"]] == ["cpalice"]
    finally:
        after = run38(
            openapi38,
            cluster,
            proxy38.url,
            "cpalice",
            calls=[
                ["cancel", "slurm", "slurm_v0038_cancel_job", {"job_id": str(job_id)}],
                ["job", "slurm", "slurm_v0038_get_job", {"job_id": str(job_id)}],
                ["missing", "slurm", "slurm_v0038_get_job", {"job_id": "999999"}],
            ],
        )["calls"]
    assert after["cancel"]["status"] == 200, after["cancel"]
    assert after["job"]["data"]["jobs"][0]["job_state"] == "CANCELLED"
    assert after["missing"]["status"] == 500, after["missing"]


# -- slurm-rest (v0.0.37, dbv0.0.37) ------------------------------------------


@pytest.fixture(scope="module")
def slurm_rest() -> Path:
    return client_python("slurm-rest")


@pytest.fixture(scope="module")
def proxy_db(
    dbd_cluster: RealSlurmCluster, proxy_factory: Callable[..., ProxyProcess], rules: Path
) -> ProxyProcess:
    return proxy_factory("--config", str(rules), upstream=dbd_cluster.url)


@pytest.fixture(scope="module")
def db_reservation(dbd_cluster: RealSlurmCluster) -> Iterator[str]:
    yield from with_reservation(dbd_cluster)


def run37(python: Path, cluster: RealSlurmCluster, url: str, **req: Any) -> Any:
    request = {
        "url": url,
        "user": "root",
        "token": cluster.tokens["root"],
        "calls": [],
        **req,
    }
    return run_client(python, "slurm_rest_client.py", request)


def slurm_rest_reads(job: int, reservation: str, cluster_name: str) -> list[list[Any]]:
    """Every read slurm-rest has under v0.0.37 and dbv0.0.37 (as root, who may read all)."""
    return [
        ["ping", "slurmctld_ping", {}],
        ["diag", "slurmctld_diag", {}],
        ["jobs", "slurmctld_get_jobs", {}],
        ["job", "slurmctld_get_job", {"job_id": job}],
        ["nodes", "slurmctld_get_nodes", {}],
        ["node", "slurmctld_get_node", {"node_name": "localhost"}],
        ["partitions", "slurmctld_get_partitions", {}],
        ["partition", "slurmctld_get_partition", {"partition_name": "debug"}],
        ["reservations", "slurmctld_get_reservations", {}],
        ["reservation", "slurmctld_get_reservation", {"reservation_name": reservation}],
        ["db_diag", "slurmdbd_diag_0", {}],
        ["db_config", "slurmdbd_get_db_config_0", {}],
        ["db_jobs", "slurmdbd_get_jobs_0", {}],
        ["db_job", "slurmdbd_get_job_0", {"job_id": job}],
        ["db_accounts", "slurmdbd_get_accounts_0", {}],
        ["db_account", "slurmdbd_get_account_0", {"account_name": "root"}],
        ["db_associations", "slurmdbd_get_associations_0", {}],
        ["db_clusters", "slurmdbd_get_clusters_0", {}],
        ["db_cluster", "slurmdbd_get_cluster_0", {"cluster_name": cluster_name}],
        ["db_qos", "slurmdbd_get_qos_0", {}],
        ["db_single_qos", "slurmdbd_get_single_qos_0", {"qos_name": "normal"}],
        ["db_tres", "slurmdbd_get_tres_0", {}],
        ["db_users", "slurmdbd_get_users_0", {}],
        ["db_user", "slurmdbd_get_user_0", {"user_name": "root"}],
        ["db_wckeys", "slurmdbd_get_wckeys_0", {}],
    ]


#: 22.05 answers dbv0.0.37 ``/wckeys`` on a database without wckeys with
#: 500 "Nothing found" (error 9003), directly as through the proxy.
NO_WCKEYS = frozenset({"db_wckeys"})
#: Reads slurm-rest 0.0.37.1 cannot deserialize from the real 22.05 (with
#: or without its ``_check_return_type``): its spec declares members the
#: daemon sends otherwise (``array_job_id`` a string, sent as an integer;
#: ``owner``, ``default_time_limit``, ``partition``, ``qos``,
#: ``comment.administrator`` strings or integers, sent as null; users'
#: ``associations`` an object, sent as a list). A fault of the client's spec,
#: the same directly as through the proxy.
CLIENT_FAILS = frozenset(
    {
        "jobs",
        "job",
        "nodes",
        "node",
        "partitions",
        "partition",
        "db_config",
        "db_job",
        "db_accounts",
        "db_account",
        "db_associations",
        "db_users",
        "db_user",
    }
)


def wait_for_db_job(cluster: RealSlurmCluster, job: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        status, _, raw = cluster.request("GET", f"/slurmdb/v0.0.37/job/{job}", "root")
        if status == 200 and json.loads(raw).get("jobs"):
            return
        assert time.monotonic() < deadline, f"slurmdbd never showed job {job}"
        time.sleep(0.25)


def test_slurm_rest_reads_the_same_directly_and_through_the_proxy(
    dbd_cluster: RealSlurmCluster,
    slurm_rest: Path,
    proxy_db: ProxyProcess,
    db_reservation: str,
) -> None:
    """Every read slurm-rest can deserialize from 22.05 is equal directly and
    through the proxy, and a hit when repeated; the reads it cannot
    (:data:`CLIENT_FAILS`) fail identically through the proxy."""
    body = job_body(dbd_cluster, name="slurm-rest")
    submitted = run37(slurm_rest, dbd_cluster, proxy_db.url, submit=body)["submitted"]
    try:
        # slurmctld tells slurmdbd of a job a moment after the submit: read
        # only once slurmdbd has it, or the direct read and the proxy's
        # first read could see two different databases.
        wait_for_db_job(dbd_cluster, submitted)
        calls = slurm_rest_reads(submitted, db_reservation, dbd_cluster.cluster_name)
        direct = check_reads(
            lambda url: run37(slurm_rest, dbd_cluster, url, calls=calls),
            dbd_cluster.url,
            proxy_db.url,
            [c[0] for c in calls],
            NO_WCKEYS | CLIENT_FAILS,
        )
        failed = set(errors_of(direct))
        assert failed - NO_WCKEYS == CLIENT_FAILS, "the client's failures changed: update the doc"
    finally:
        dbd_cluster.request("DELETE", f"/slurm/v0.0.37/job/{submitted}", "root")


def test_slurm_rest_submit_through_the_proxy_appears_in_the_next_list(
    dbd_cluster: RealSlurmCluster, slurm_rest: Path, proxy_db: ProxyProcess
) -> None:
    """slurm-rest's submit through the proxy shows in the next list. The list
    is read raw: slurm-rest cannot deserialize 22.05's /jobs (CLIENT_FAILS)."""
    url = f"{proxy_db.url}/slurm/v0.0.37/jobs"
    hdrs = dbd_cluster.headers("root")
    httpx.get(url, headers=hdrs, timeout=30)
    cached = httpx.get(url, headers=hdrs, timeout=30)
    assert is_hit(dict(cached.headers)), "premise: /jobs cached before the submit"
    body = job_body(dbd_cluster, name="slurm-rest-submit")
    job_id = run37(slurm_rest, dbd_cluster, proxy_db.url, submit=body)["submitted"]
    try:
        seen = httpx.get(url, headers=hdrs, timeout=30)
        assert seen.status_code == 200, seen.text
        assert job_id in {j["job_id"] for j in seen.json()["jobs"]}
    finally:
        dbd_cluster.request("DELETE", f"/slurm/v0.0.37/job/{job_id}", "root")
