"""``--api-version`` takes every version the simulator serves, and the
workload's requests work in each (submit, then read the job back)."""

from __future__ import annotations

import pytest

from cacheproxy.bench import slurmapi
from cacheproxy.simulator.releases import VERSIONS
from tests.simulator.conftest import ROOT, started


def test_every_version_is_a_choice() -> None:
    # cli.py gives argparse choices=slurmapi.SUPPORTED_VERSIONS
    assert tuple(slurmapi.SUPPORTED_VERSIONS) == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_the_workload_speaks_every_version(version: str) -> None:
    with started(style="all", jobs=5, nodes=3) as sim, sim.client() as c:
        r = c.post(
            slurmapi.submit(version), headers=ROOT, content=slurmapi.submit_body(version, "root", 1)
        )
        assert r.status_code == 200, r.text[:300]
        job_id = slurmapi.submitted_job_id(r.content)
        assert job_id is not None
        states = slurmapi.job_states(c.get(slurmapi.job(version, job_id), headers=ROOT).content)
        assert states is not None
        assert states[0] in ("PENDING", "RUNNING")
