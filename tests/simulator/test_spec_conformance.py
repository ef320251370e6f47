"""Every simulator answer of every version validates against that version's spec.

Directly, and through ``cacheproxy serve`` in front of the simulator (a miss,
then a hit: both must be valid).  ``spec_check`` says what is tolerated and
why; the tolerance is pinned to the real 22.05 bodies below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cacheproxy.simulator import specs
from cacheproxy.simulator.releases import VERSIONS
from tests.simulator import spec_check
from tests.simulator.conftest import ROOT, Running, started
from tests.simulator.proxied import proxy_in_front

EXAMPLES = Path(__file__).resolve().parents[3] / "shared/slurm-openapi/examples/22.05.8-v0.0.38"


@pytest.fixture(scope="module")
def sim_all() -> Iterator[Running]:
    with started(style="all") as running:
        yield running


@pytest.fixture(scope="module")
def proxy_url(sim_all: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with proxy_in_front(sim_all.url, tmp_path_factory.mktemp("proxy") / "proxy.log") as url:
        yield url


def _running_job(sim: Running) -> int:
    return next(j.job_id for j in sim.app.cluster.jobs.values() if j.state == "RUNNING")


def _check_version(base_url: str, version: str, job_id: int, repeat: int) -> None:
    urls = spec_check.get_urls(version, job_id)
    assert len(urls) >= 12, urls  # every version has at least the 22.05 reads
    failures: dict[str, list[str]] = {}
    with httpx.Client(base_url=base_url, timeout=60) as c:
        for url, op in urls:
            v = spec_check.validator(version, op)
            for _ in range(repeat):
                r = c.get(url, headers=ROOT)
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
                errs = spec_check.errors(version, v, r.json())
                if errs:
                    failures[url] = errs[:5]
    assert failures == {}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_get_matches_its_spec(sim_all: Running, version: str) -> None:
    _check_version(sim_all.url, version, _running_job(sim_all), repeat=1)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_get_through_the_proxy_matches_its_spec(
    sim_all: Running, proxy_url: str, version: str
) -> None:
    _check_version(proxy_url, version, _running_job(sim_all), repeat=2)


def test_real_22_05_bodies_deviate_only_as_tolerated() -> None:
    """The legacy tolerance is exactly what real Debian 12 slurmrestd 22.05.8 bodies need."""
    if not EXAMPLES.is_dir():
        pytest.skip("shared/slurm-openapi examples are not next to this checkout")
    cases = {
        "jobs.json": ("jobs",),
        "nodes.json": ("nodes",),
        "partitions.json": ("partitions",),
        "diag.json": ("diag",),
        "ping.json": ("ping",),
        "licenses.json": ("licenses",),
        "reservations.json": ("reservations",),
    }
    seen_tolerated = 0
    for name, pattern in cases.items():
        op = specs.lookup("v0.0.38", "slurm", pattern, "GET")
        assert op is not None
        v = spec_check.validator("v0.0.38", op)
        body = json.loads((EXAMPLES / name).read_text())
        assert spec_check.errors("v0.0.38", v, body) == [], name
        seen_tolerated += sum(1 for _ in v.iter_errors(body))
    assert seen_tolerated > 0  # the tolerance is needed by the real daemon, not invented


def test_shaped_versions_differ_from_their_base(sim_all: Running) -> None:
    """v0.0.41 jobs are shaped to their own schema, not v0.0.43's (a field only v0.0.41 has)."""
    job = _running_job(sim_all)
    with sim_all.client() as c:
        v41 = c.get(f"/slurm/v0.0.41/job/{job}", headers=ROOT).json()["jobs"][0]
        v43 = c.get(f"/slurm/v0.0.43/job/{job}", headers=ROOT).json()["jobs"][0]
    only41 = set(v41) - set(v43)
    only43 = set(v43) - set(v41)
    assert only41 or only43
    doc = specs.document("openapi-v0.0.41.json")["components"]["schemas"]
    assert list(v41) == list(doc["v0.0.41_job_info"]["properties"])


@pytest.mark.parametrize("version", ["v0.0.36", "v0.0.37", "v0.0.38"])
def test_22_05_slurmdb_tres_key_and_config_order_follow_the_source(
    sim_all: Running, version: str
) -> None:
    """dbv0.0.36-38 tres.c dumps under "TRES" (not the spec's "tres"); config.c runs the
    clusters, tres, accounts, users, qos, wckeys, associations handlers in that order."""
    with sim_all.client() as c:
        tres = c.get(f"/slurmdb/{version}/tres", headers=ROOT).json()
        config = c.get(f"/slurmdb/{version}/config", headers=ROOT).json()
    assert "TRES" in tres
    assert "tres" not in tres
    payload = [k for k in config if k not in ("meta", "errors")]
    assert payload == ["clusters", "TRES", "accounts", "users", "qos", "wckeys", "associations"]
