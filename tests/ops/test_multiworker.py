"""With ``--workers N`` and ``PROMETHEUS_MULTIPROC_DIR``, any worker's scrape
shows every worker's counts: ``cacheproxy serve`` for real, in front of the
simulator, both started here on loopback and stopped by pid."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import samples
from tests.store.servers import free_port

USER = {"X-SLURM-USER-NAME": "user001", "X-SLURM-USER-TOKEN": "sim-token-user001"}
DEADLINE = 60.0
"""Generous bound for processes to start and workers to sync (about 1 s)."""


@contextlib.contextmanager
def started(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cacheproxy", *args],
            stdout=subprocess.PIPE if args[0] == "simulate" else out,
            stderr=out,
            env=env,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def eventually(check: object, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    pytest.fail(f"{what} within {DEADLINE:g} s\n{tails}")


@pytest.mark.slow
def test_every_workers_counts_reach_the_scrape(tmp_path: Path) -> None:
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    sim_log, proxy_log = tmp_path / "simulator.log", tmp_path / "proxy.log"
    simulate = ["simulate", "--port", "0", "--jobs", "20", "--nodes", "4", "--cost-model", "none"]
    with started(simulate, sim_log) as sim:
        assert sim.stdout is not None
        line = sim.stdout.readline().decode()
        assert line.startswith("listening on http://"), sim_log.read_text()
        upstream = line.split()[-1]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
        serve = ["serve", "--upstream", upstream, "--port", str(port), "--workers", "2"]
        with started(serve, proxy_log, env):
            logs = [sim_log, proxy_log]

            def both_workers_up() -> bool:
                ok = httpx.get(base + "/_cacheproxy/health").status_code == 200
                return ok and len(list(multiproc.glob("counter_*.db"))) == 2

            eventually(both_workers_up, "two workers did not start", logs)
            n = 40
            for _ in range(n):  # a new connection each: the kernel spreads them
                with httpx.Client(base_url=base) as c:
                    r = c.get("/slurm/v0.0.43/partitions", headers=USER)
                    assert r.status_code == 200, r.text

            def all_counted() -> bool:
                m = samples(httpx.get(base + "/_cacheproxy/metrics").text)
                total = sum(v for (name, _), v in m.items() if name == "cacheproxy_requests_total")
                return total == n

            for _ in range(5):  # whichever worker answers the scrape
                eventually(all_counted, f"the scrape did not count all {n} requests", logs)
