"""docs/DEPLOY.md's single-host path, end to end, in front of a real 22.05
slurmrestd (JWT tokens from ``scontrol token``); a held slurmctld keeps a
request in flight while the proxy is told to stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.deploy_path import Upstream, follow
from tests.realslurm.cluster import API, RealSlurmCluster


@pytest.mark.slow
def test_single_host_path_against_real_slurmrestd(
    cluster: RealSlurmCluster, tmp_path: Path
) -> None:
    upstream = Upstream(
        url=cluster.url,
        headers=cluster.headers("root"),
        api=API,
        pause=lambda: cluster.pause("slurmctld"),
        resume=lambda: cluster.resume("slurmctld"),
    )
    seen = follow(tmp_path, upstream)
    assert seen["start"]["upstream"] == cluster.url
