"""For each PrivateData word, the simulator private in that respect: no user
ever receives another user's private data through the proxy (and, for the
words the proxy is told, the routes nobody hides are shared).

These fail if a scope is wrong: a route shared that the word hides gives one
user another's view (a mismatch against the simulator's answer to that user).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cacheproxy.core import privatedata
from tests.scope import leakcheck
from tests.simulator.conftest import started
from tests.simulator.proxied import proxy_in_front


def _job_ids(sim_jobs: dict[int, object], user: str) -> tuple[int, int]:
    own = next(j for j, job in sim_jobs.items() if getattr(job, "user", "") == user)
    other = next(j for j, job in sim_jobs.items() if getattr(job, "user", "") != user)
    return own, other


@pytest.mark.parametrize("word", privatedata.WORDS)
def test_no_user_gets_another_users_private_data(word: str, tmp_path: Path) -> None:
    with started(private_data=word, **leakcheck.SIM_CONFIG) as sim:
        jobs = sim.app.cluster.jobs
        own, other = _job_ids(jobs, jobs[min(jobs)].user)  # type: ignore[arg-type]
        targets = leakcheck.paths(own, other)
        with sim.client() as direct:
            expected = leakcheck.truth(direct, leakcheck.USERS, targets)
        with (
            proxy_in_front(sim.url, tmp_path / "proxy.log", "--private-data", word) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            hits: set[str] = set()
            wrong = leakcheck.leaks([client], expected, leakcheck.USERS, targets, shared_hits=hits)
            assert wrong == []
        # Every shared route was shared (a hit for a user who did not fill it),
        # except where the answer is one the cache never stores (an error), and
        # the first target: each user's first request proves its credential.
        stored = {t for t in targets[1:] if expected[("root", t)][0] == 200}
        assert hits == leakcheck.shared_targets(targets, word) & stored


def test_a_wrong_table_would_be_caught(tmp_path: Path) -> None:
    """The check itself: told ``none`` while the simulator hides jobs, the
    proxy shares /jobs and a user sees another's jobs (the leak the test
    above exists to catch; the audit of item 4 is what catches it in a site)."""
    with started(private_data="jobs", **leakcheck.SIM_CONFIG) as sim:
        jobs = sim.app.cluster.jobs
        own, _other = _job_ids(jobs, jobs[min(jobs)].user)  # type: ignore[arg-type]
        targets = ["/slurm/v0.0.43/jobs", f"/slurm/v0.0.43/job/{own}"]
        with sim.client() as direct:
            expected = leakcheck.truth(direct, leakcheck.USERS, targets)
        with (
            proxy_in_front(sim.url, tmp_path / "proxy.log", "--private-data", "none") as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            assert leakcheck.leaks([client], expected, leakcheck.USERS, targets)
