"""ebi-slurpy (v0.0.40-v0.0.42) against the simulator, directly and through the proxy.

Only a real 22.05 installs here, so for 24.11's versions the simulator is the
only witness: a client somebody else generated from the specs must read every
answer it gives, the same directly as through the proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients.compare import UNCACHED, comparable, errors_of, is_hit, long_ttl_rules
from tests.clients.venvs import client_python, run_client
from tests.simulator.conftest import Running, started
from tests.simulator.proxied import proxy_in_front

VERSIONS = ("v0.0.40", "v0.0.41", "v0.0.42")
USER = "root"  # slurmdb's diag and config are for operators; root may read them all
TOKEN = "sim-token-root"


@pytest.fixture(scope="module")
def slurpy() -> Path:
    return client_python("ebi-slurpy")


@pytest.fixture(scope="module")
def sim() -> Iterator[Running]:
    with started(style="24.11") as running:
        yield running


@pytest.fixture(scope="module")
def proxy(sim: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("slurpy-proxy")
    rules = long_ttl_rules(tmp)
    with proxy_in_front(sim.url, tmp / "proxy.log", "--config", str(rules)) as url:
        yield url


def reads(sim: Running, version: str) -> list[list[Any]]:
    """Every read slurpy has for the objects the simulator holds, by label."""
    hdrs = {"X-SLURM-USER-NAME": USER, "X-SLURM-USER-TOKEN": TOKEN}
    with sim.client(headers=hdrs) as c:
        job = c.get(f"/slurm/{version}/jobs").json()["jobs"][0]["job_id"]
        node = c.get(f"/slurm/{version}/nodes").json()["nodes"][0]["name"]
        part = c.get(f"/slurm/{version}/partitions").json()["partitions"][0]["name"]
        resv = c.get(f"/slurm/{version}/reservations").json()["reservations"][0]["name"]
        db_job = c.get(f"/slurmdb/{version}/jobs").json()["jobs"][0]["job_id"]
    return [
        ["jobs", "slurm", "get_jobs", {}],
        ["job", "slurm", "get_job", {"job_id": str(job)}],
        ["nodes", "slurm", "get_nodes", {}],
        ["node", "slurm", "get_node", {"node_name": node}],
        ["partitions", "slurm", "get_partitions", {}],
        ["partition", "slurm", "get_partition", {"partition_name": part}],
        ["reservations", "slurm", "get_reservations", {}],
        ["reservation", "slurm", "get_reservation", {"reservation_name": resv}],
        ["licenses", "slurm", "get_licenses", {}],
        ["diag", "slurm", "get_diag", {}],
        ["db_jobs", "slurmdb", "get_jobs", {}],
        ["db_job", "slurmdb", "get_job", {"job_id": str(db_job)}],
        ["db_accounts", "slurmdb", "get_accounts", {}],
        ["db_users", "slurmdb", "get_users", {}],
        ["db_associations", "slurmdb", "get_associations", {}],
        ["db_qos", "slurmdb", "get_qos", {}],
        ["db_tres", "slurmdb", "get_tres", {}],
        ["db_clusters", "slurmdb", "get_clusters", {}],
        ["db_wckeys", "slurmdb", "get_wckeys", {}],
        ["db_config", "slurmdb", "get_config", {}],
        ["db_diag", "slurmdb", "get_diag", {}],
    ]


def run(python: Path, url: str, version: str, calls: list[list[Any]], **extra: Any) -> Any:
    request = {
        "package": "slurpy.v" + version.removeprefix("v").replace(".", ""),
        "apis": {"slurm": "SlurmApi", "slurmdb": "SlurmdbApi"},
        "url": url,
        "user": USER,
        "token": TOKEN,
        "calls": calls,
    }
    return run_client(python, "generated_client.py", {**request, **extra})


@pytest.mark.parametrize("version", VERSIONS)
def test_slurpy_reads_the_same_directly_and_through_the_proxy(
    slurpy: Path, sim: Running, proxy: str, version: str
) -> None:
    calls = reads(sim, version)
    direct = run(slurpy, sim.url, version, calls)["calls"]
    first = run(slurpy, proxy, version, calls)["calls"]
    again = run(slurpy, proxy, version, calls)["calls"]

    for name, results in (("direct", direct), ("proxy", first), ("proxy again", again)):
        assert not errors_of(results), f"{version} {name}: {errors_of(results)}"
    for label, _, _, _ in calls:
        want = comparable(label, direct[label]["data"])
        assert comparable(label, first[label]["data"]) == want, f"{version} {label}"
        assert comparable(label, again[label]["data"]) == want, f"{version} {label} (repeat)"
    misses = {
        label: r["headers"].get("cache-status")
        for label, r in again.items()
        if label not in UNCACHED and not is_hit(r["headers"])
    }
    assert not misses, f"{version}: repeats through the proxy were not hits: {misses}"
    assert not any(is_hit(again[label]["headers"]) for label in UNCACHED if label in again)


@pytest.mark.parametrize("version", VERSIONS)
def test_slurpy_submit_through_the_proxy_appears_in_the_next_list(
    slurpy: Path, sim: Running, proxy: str, version: str
) -> None:
    listing = [["jobs", "slurm", "get_jobs", {}]]
    warm = run(slurpy, proxy, version, listing)["calls"]["jobs"]
    assert warm["status"] == 200, warm
    cached = run(slurpy, proxy, version, listing)["calls"]["jobs"]
    assert is_hit(cached["headers"]), "premise: the list is cached before the submit"

    submission = {
        "script": "#!/bin/sh\nsleep 600\n",
        "job": {
            "name": f"slurpy-{version}",
            "current_working_directory": "/tmp",
            "environment": ["PATH=/usr/bin:/bin"],
        },
    }
    submit = ["slurm", "post_job_submit", "JobSubmitReq", submission]
    after = run(slurpy, proxy, version, listing, submit=submit)
    job_id = after["submitted"]
    assert isinstance(job_id, int)
    assert job_id > 0
    seen = run(slurpy, proxy, version, listing)["calls"]["jobs"]
    assert job_id in {j["job_id"] for j in seen["data"]["jobs"]}, seen["headers"]
    direct = httpx.get(
        f"{sim.url}/slurm/{version}/job/{job_id}",
        headers={"X-SLURM-USER-NAME": USER, "X-SLURM-USER-TOKEN": TOKEN},
    )
    assert direct.json()["jobs"][0]["name"] == f"slurpy-{version}"
