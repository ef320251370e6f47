"""docs/DEPLOY.md's single-host path, end to end, in front of the simulator
(tests/realslurm/test_deploy.py follows it in front of a real 22.05)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.ops.deploy_path import Upstream, follow
from tests.ops.test_multiworker import USER, started


@pytest.mark.slow
def test_single_host_path_against_the_simulator(tmp_path: Path) -> None:
    log = tmp_path / "simulator.log"
    args = ["simulate", "--port", "0", "--jobs", "20", "--nodes", "4", "--cost-model", "none"]
    with started(args, log) as sim:
        assert sim.stdout is not None
        line = sim.stdout.readline().decode()
        assert line.startswith("listening on http://"), log.read_text()
        upstream = Upstream(
            url=line.split()[-1],
            headers=USER,
            api="v0.0.43",
            pause=lambda: os.kill(sim.pid, signal.SIGSTOP),
            resume=lambda: os.kill(sim.pid, signal.SIGCONT),
        )
        seen = follow(tmp_path, upstream)
    assert seen["start"]["upstream"] == upstream.url
