"""Fixtures for the real-slurmrestd tests: one cluster per session, proxies on demand.

Why one cluster per session: it starts in about 1.5 s, but every test can share
it because each test makes its own jobs and looks only at those.

Why a missing install fails instead of skipping: a green run that silently
skipped the only tests against the real daemon would prove nothing. Set
``CACHEPROXY_SKIP_REALSLURM=1`` to turn "cannot provide a cluster here" into a
skip (with the reason); a cluster that can be provided still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.realslurm.cluster import API, ClusterUnavailable, RealSlurmCluster, free_ports

# Helpers assert too: have pytest explain their failures like a test's.
pytest.register_assert_rewrite("tests.realslurm.helpers")

REPO = Path(__file__).resolve().parents[2]
SKIP_ENV = "CACHEPROXY_SKIP_REALSLURM"
PROXY_START_TIMEOUT = 30.0


def _provide(c: RealSlurmCluster) -> Iterator[RealSlurmCluster]:
    """Start ``c``; fail clearly (or skip, when asked) if it cannot be had here."""
    try:
        c.start()
    except ClusterUnavailable as exc:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"{SKIP_ENV}=1 and no real Slurm cluster here: {exc}")
        pytest.fail(
            f"real Slurm cluster unavailable: {exc} "
            f"(set {SKIP_ENV}=1 to skip the realslurm tests instead)",
            pytrace=False,
        )
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[RealSlurmCluster]:
    """A running single-node cluster (slurmctld, slurmd, slurmrestd, munged)."""
    yield from _provide(RealSlurmCluster())


@pytest.fixture(scope="session")
def dbd_cluster() -> Iterator[RealSlurmCluster]:
    """A second cluster with slurmdbd (and its own mariadbd): ``/slurmdb/``.

    Separate so that the fast cluster above does not wait for the database.
    """
    yield from _provide(RealSlurmCluster(slurmdbd=True))


@dataclass
class ProxyProcess:
    """A ``cacheproxy serve`` subprocess in front of the cluster."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop exactly this process, by pid; reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _start_proxy(upstream: str, log: Path, extra: tuple[str, ...] = ()) -> ProxyProcess:
    port = free_ports(1)[0]
    # Only what we pass: a developer's CACHEPROXY_* settings must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    argv = [
        sys.executable,
        "-m",
        "cacheproxy",
        "serve",
        "--upstream",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
        )
    proxy = ProxyProcess(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    deadline = time.monotonic() + PROXY_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = proxy.log_tail()
            pytest.fail(
                f"`{' '.join(argv)}` exited with {proc.returncode} before answering:\n{tail}",
                pytrace=False,
            )
        try:
            r = httpx.get(proxy.url + "/_cacheproxy/health", timeout=1)
            if r.status_code == 200:
                return proxy
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proxy.stop()
            pytest.fail(
                f"proxy not healthy after {PROXY_START_TIMEOUT:.0f}s:\n{proxy.log_tail()}",
                pytrace=False,
            )
        time.sleep(0.1)


@pytest.fixture(scope="session")
def proxy_factory(
    cluster: RealSlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ProxyProcess]]:
    """``start(*serve_args, upstream=None)``: another proxy with an empty cache,
    in front of the session cluster unless ``upstream`` says otherwise."""
    started: list[ProxyProcess] = []
    logs = tmp_path_factory.mktemp("proxy-logs")

    def start(*extra: str, upstream: str | None = None) -> ProxyProcess:
        log = logs / f"proxy-{len(started)}.log"
        p = _start_proxy(upstream or cluster.url, log, extra)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture(scope="session")
def proxy(proxy_factory: Callable[..., ProxyProcess]) -> ProxyProcess:
    """The shared proxy most tests go through."""
    return proxy_factory()


@pytest.fixture
def fresh_proxy(proxy_factory: Callable[..., ProxyProcess]) -> Iterator[ProxyProcess]:
    """A proxy with an empty cache, for tests whose counts must start from zero."""
    p = proxy_factory()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def held_job(cluster: RealSlurmCluster) -> Iterator[Callable[..., int]]:
    """``submit(user, via=None)``: submit a held job as ``user``, directly or
    through the proxy at base URL ``via``; every one is cancelled afterwards.

    Held jobs stay PENDING and use no CPU, so the cluster's state does not move
    under tests that compare responses. Submit through the proxy whenever the
    test then reads through a proxy that may hold a cached list: a write that
    bypasses the proxy is, by design, only bounded by the TTL.
    """
    made: list[tuple[str, int]] = []
    path = f"/slurm/{API}/job/submit"

    def submit(user: str, via: str | None = None) -> int:
        if via is None:
            status, _, body = cluster.request("POST", path, user, job_body(cluster))
        else:
            r = httpx.post(
                via + path, json=job_body(cluster), headers=cluster.headers(user), timeout=10
            )
            status, body = r.status_code, r.content
        assert status == 200, body
        job_id = int(json.loads(body)["job_id"])
        made.append((user, job_id))
        return job_id

    yield submit
    for user, job_id in made:
        cluster.request("DELETE", f"/slurm/{API}/job/{job_id}", user)


def job_body(
    cluster: RealSlurmCluster, name: str = "cacheproxy-e2e", hold: bool = True
) -> dict[str, Any]:
    """A v0.0.38 submission: 22.05 wants ``environment`` as an object and a
    working directory (else the job runs in ``/`` and fails)."""
    return {
        "script": "#!/bin/sh\nsleep 600\n",
        "job": {
            "name": name,
            "hold": hold,
            "time_limit": 15,
            "environment": {"PATH": "/usr/bin:/bin"},
            "current_working_directory": str(cluster.work_dir),
            "standard_output": "/dev/null",
            "standard_error": "/dev/null",
        },
    }
