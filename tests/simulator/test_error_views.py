"""A read of something that is not there, per release and version: the status
and body slurmrestd answers, checked against the spec and the real answers.

The plugin chooses the error number, the daemon maps it to a status
(src/slurmrestd/operations.c up to 25.05, src/common/http.c from 25.11), so a
v0.0.38 answer differs between 22.05 and 23.02.  From SchedMD/slurm:

* job: ESLURM_INVALID_JOB_ID (2017) -> 404 from 23.02, 500 in 22.05;
* node: v0.0.36-38 report 2018 (500, mapped nowhere); the data_parser
  plugins ask slurmctld for the one node, get no record and no error, and
  report errno 0 "No error": a 200 with no payload (real 25.05 and 25.11);
* partition, reservation: v0.0.36-38 report 2000 / 2050 (500); the
  data_parser plugins search the list and report ESLURM_REST_INVALID_QUERY
  (9000, "Unable to find partition X"), 422 from 23.02;
* a non-integer ``update_time`` under v0.0.36-38: ``get_date_param()``
  returns ESLURM_REST_INVALID_QUERY with no error entry: 400 in 22.05, 422
  from 23.02.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cacheproxy.core.request import LEGACY_VERSIONS
from cacheproxy.simulator.releases import RELEASES
from tests.clients.compare import without_meta
from tests.simulator import spec_check
from tests.simulator.conftest import ROOT, Running, started
from tests.simulator.proxied import proxy_in_front

EXAMPLES = Path(__file__).resolve().parents[3] / "shared/slurm-openapi/examples"
CASES = {
    "job": (("job", "{job_id}"), "job/999999"),
    "node": (("node", "{node_name}"), "node/nosuch"),
    "partition": (("partition", "{partition_name}"), "partition/nosuch"),
    "reservation": (("reservation", "{reservation_name}"), "reservation/nosuch"),
    "bad update_time": (("jobs",), "jobs?update_time=abc"),
}


def expected(release: str, version: str, case: str) -> tuple[int, int | None]:
    """(status, error number or None for no error entry), from the source."""
    since_23_02 = RELEASES[release].number >= (23, 2, 0)
    legacy = version in LEGACY_VERSIONS
    if case == "job":
        return (404 if since_23_02 else 500), 2017
    if case == "node":
        return (500, 2018) if legacy else (200, 0)
    if case in ("partition", "reservation"):
        if legacy:
            return 500, 2000 if case == "partition" else 2050
        return 422, 9000
    assert case == "bad update_time"
    if legacy:
        return (422 if since_23_02 else 400), None
    return 200, None  # the data_parser's own parse errors are not simulated


@pytest.mark.parametrize("release", list(RELEASES))
def test_each_release_answers_a_missing_thing_as_its_source_does(release: str) -> None:
    with started(style=release) as sim, sim.client(headers=ROOT) as c:
        for version in RELEASES[release].versions:
            for case, (pattern, path) in CASES.items():
                if version == "v0.0.36" and case == "reservation":
                    continue  # v0.0.36 has no reservation path
                r = c.get(f"/slurm/{version}/{path}")
                status, errno = expected(release, version, case)
                assert r.status_code == status, (release, version, case, r.text[:300])
                doc = r.json()
                numbers = [e.get("error_number", e.get("errno")) for e in doc["errors"]]
                assert numbers == ([] if errno is None else [errno]), (release, version, case)
                if version not in LEGACY_VERSIONS or case == "job":
                    problems = spec_check.body_errors(version, "slurm", pattern, doc, status)
                    assert problems == [], (release, version, case, problems)


@pytest.mark.parametrize(
    ("release", "version", "example", "path"),
    [
        ("22.05", "v0.0.38", "22.05.8-v0.0.38/job_missing.json", "job/999999"),
        ("25.05", "v0.0.43", "25.05-v0.0.43/slurm-job-unfound.json", "job/9486"),
        ("25.11", "v0.0.44", "25.11-v0.0.44/slurm-job-unfound.json", "job/11500"),
        ("25.05", "v0.0.43", "25.05-v0.0.43/slurm-node-unfound.json", "node/unexisting-node"),
        ("25.11", "v0.0.44", "25.11-v0.0.44/slurm-node-unfound.json", "node/unexisting-node"),
    ],
)
def test_missing_things_answer_as_the_real_daemons_did(
    release: str, version: str, example: str, path: str
) -> None:
    real_file = EXAMPLES / example
    if not real_file.is_file():
        pytest.skip("shared/slurm-openapi examples are not next to this checkout")
    real = json.loads(real_file.read_text())
    with started(style=release) as sim, sim.client(headers=ROOT) as c:
        r = c.get(f"/slurm/{version}/{path}")
    ours = r.json()
    assert ours["errors"] == real["errors"]
    assert sorted(k for k in ours if k != "meta") == sorted(k for k in real if k != "meta")
    status_file = real_file.parent / "status.json"
    if status_file.is_file():
        statuses = json.loads(status_file.read_text())
        assert r.status_code == statuses[real_file.stem]["status"]


@pytest.fixture(scope="module")
def through_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    with started(style="all") as sim:
        log = tmp_path_factory.mktemp("errors-proxy") / "proxy.log"
        with proxy_in_front(sim.url, log) as url:
            yield sim, url


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.41", "v0.0.44"])
def test_the_proxy_passes_each_missing_thing_through_unchanged(
    through_proxy: tuple[Running, str], version: str
) -> None:
    sim, url = through_proxy
    with httpx.Client(timeout=30, headers=ROOT) as c:
        for case, (_, path) in CASES.items():
            direct = c.get(f"{sim.url}/slurm/{version}/{path}")
            for _ in range(2):
                proxied = c.get(f"{url}/slurm/{version}/{path}")
                assert proxied.status_code == direct.status_code, (version, case)
                # meta names the connection; last_update is the time slurmctld packed it
                assert without_meta(proxied.json()) == without_meta(direct.json())
                if direct.status_code != 200 or direct.json()["errors"]:
                    assert "hit" not in proxied.headers["cache-status"], (version, case)
