"""A small site on loopback, all processes owned by the test:

    clients -> haproxy (round robin) -> 3 x `cacheproxy serve --redis-url`
                                           -> `cacheproxy simulate` (slurmrestd)
                                           -> redis-server (shared tier)

Every process is started with ``sys.executable``, waited for, and stopped by
pid.  Missing redis-server/haproxy binaries are installed (root) or FAIL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.store.servers import (
    START_DEADLINE,
    HAProxy,
    RedisServer,
    free_port,
    stop_process,
    wait_tcp,
)

pytestmark = [pytest.mark.redis, pytest.mark.haproxy]

ROOT = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "sim-token-root"}
REPO = Path(__file__).resolve().parents[2]


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _http_post(url: str) -> int:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


@dataclass
class Process:
    """One of our child processes, with its log."""

    name: str
    cmd: list[str]
    log: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
            )

    def wait_http(self, path: str) -> None:
        wait_tcp(self.port, self.proc, self.name, self.log)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            try:
                if _http_get(self.url + path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"{self.name}: {path} never answered 200", pytrace=False)

    def kill(self) -> None:
        """SIGKILL, by pid: a replica dying mid-load."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Site:
    sim: Process
    redis: RedisServer
    replicas: list[Process]
    lb: HAProxy

    def sim_stats(self) -> dict[str, object]:
        status, body = _http_get(self.sim.url + "/_sim/stats")
        assert status == 200
        stats: dict[str, object] = json.loads(body)
        return stats

    def upstream_total(self) -> int:
        return int(self.sim_stats()["total"])  # type: ignore[call-overload]

    def upstream_route(self, route: str) -> int:
        by_route = self.sim_stats()["by_route"]
        assert isinstance(by_route, dict)
        return int(by_route.get(route, 0))

    def reset_sim(self) -> None:
        assert _http_post(self.sim.url + "/_sim/reset") == 200


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Build a site; everything started is stopped, by pid, at teardown."""
    started: list[Process] = []
    servers: list[RedisServer | HAProxy] = []

    def build(
        *,
        replicas: int = 3,
        cost_model: str = "realistic",
        jobs: int = 60,
        redis_timeout: float | None = None,
        sim_args: tuple[str, ...] = (),
        proxy_args: tuple[str, ...] = (),
    ) -> Site:
        """``redis_timeout``: for tests that count upstream requests exactly.
        On a loaded test machine a Redis reply can look late because the
        replica's event loop was busy; that request then (rightly) goes
        upstream, which such a test would misread as a coalescing failure."""
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        redis = RedisServer(tmp_path / "redis").start()
        servers.append(redis)
        sim_port = free_port()
        sim = Process(
            "simulator",
            [
                sys.executable, "-m", "cacheproxy", "simulate",
                "--port", str(sim_port), "--jobs", str(jobs), "--nodes", "20",
                "--cost-model", cost_model, "--job-speed", "0", "--seed", "7",
                *sim_args,
            ],
            logs / "simulator.log",
            sim_port,
        )  # fmt: skip
        sim.spawn()
        started.append(sim)
        procs = []
        for i in range(replicas):
            port = free_port()
            p = Process(
                f"replica{i}",
                [
                    sys.executable, "-m", "cacheproxy", "serve",
                    "--upstream", sim.url, "--port", str(port),
                    "--redis-url", redis.url, "--redis-prefix", "site:v1:",
                    "--log-level", "warning", "--no-access-log",
                    # the balancer (haproxy or nginx, on loopback) forwards
                    # the client's address, as config/*.env.example says
                    "--forwarded-allow-ips", "127.0.0.1",
                    *(["--redis-timeout", str(redis_timeout)] if redis_timeout else []),
                    *proxy_args,
                ],
                logs / f"replica{i}.log",
                port,
                env={"CACHEPROXY_HMAC_KEY": "test-site-shared-secret"},
            )  # fmt: skip
            p.spawn()
            started.append(p)
            procs.append(p)
        sim.wait_http("/_sim/stats")
        for p in procs:
            p.wait_http("/_cacheproxy/health")
        lb = HAProxy(tmp_path / "haproxy", [p.port for p in procs]).start()
        servers.append(lb)
        for i in range(replicas):
            lb.wait_status(f"r{i}", "UP")
        return Site(sim, redis, procs, lb)

    yield build
    for proc in reversed(started):
        proc.stop()
    for server in reversed(servers):
        server.stop()
