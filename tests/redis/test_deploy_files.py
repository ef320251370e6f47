"""The deployment files are checked by running them, not by reading them:
the load balancer configurations front real replicas, the Docker health
check command probes a real replica, the environment example loads."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cacheproxy import settings
from tests.redis.conftest import REPO, ROOT, Site
from tests.store.servers import Nginx, ensure_binary

pytestmark = [pytest.mark.redis, pytest.mark.haproxy]

V = "v0.0.43"


def test_shipped_haproxy_config_is_valid() -> None:
    haproxy = ensure_binary("haproxy", "haproxy")
    out = subprocess.run(
        [haproxy, "-c", "-f", str(REPO / "config" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def test_shipped_nginx_config_balances_real_replicas(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    s = site(redis_timeout=0.5)  # counts upstream requests exactly: see site()
    nginx = Nginx(tmp_path / "nginx", [p.port for p in s.replicas]).start()
    try:
        async with httpx.AsyncClient(base_url=nginx.url, headers=ROOT, timeout=30) as c:
            answers = [await c.get(f"/slurm/{V}/partitions") for _ in range(30)]
            health = await c.get("/_cacheproxy/health")
    finally:
        nginx.stop()
    assert [r.status_code for r in answers] == [200] * 30
    assert health.status_code == 200
    outcomes = Counter(r.headers["cache-status"].split(";")[1].strip() for r in answers)
    # one replica fetched, the other two found it in Redis: one upstream request
    assert outcomes["hit"] == 29, outcomes
    assert s.upstream_route("GET /slurm/{v}/partitions") == 1


PARTITIONS = f"/slurm/{V}/partitions"
OWN_PATHS = (
    "/_cacheproxy/metrics",
    "/_cacheproxy/stats",
    "/_cacheproxy/admin/stats",
    "/%5Fcacheproxy/admin/stats",
    "/%5fcacheproxy/metrics",
    "/_cacheproxy/",
    "/_cacheproxy",
)


async def _check_balancer(lb_url: str, limit: int) -> None:
    """Issue 14, defect 3: through the balancer, one client's failed logins
    block that client, not everyone behind the balancer, and an
    X-Forwarded-For the client writes itself does not get it out; the
    proxy's own endpoints answer operators (loopback here) only.  The
    outsider is 127.0.0.2, the rest 127.0.0.1."""
    outsider = httpx.AsyncClient(
        base_url=lb_url,
        timeout=30,
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
    )
    async with outsider, httpx.AsyncClient(base_url=lb_url, timeout=30) as local:
        for i in range(limit):
            guess = {"X-SLURM-USER-NAME": f"user{i}", "X-SLURM-USER-TOKEN": f"wrong-{i}"}
            r = await outsider.get(PARTITIONS, headers=guess)
            assert r.status_code in (401, 500, 511), r.status_code
        assert (await outsider.get(PARTITIONS, headers=ROOT)).status_code == 429
        r = await local.get(PARTITIONS, headers=ROOT)
        assert r.status_code == 200  # everyone else behind the balancer still gets in
        spoofed = {
            "X-SLURM-USER-NAME": "user0",
            "X-SLURM-USER-TOKEN": "one-more-guess",
            "X-Forwarded-For": "10.8.8.8",
        }
        r = await outsider.get(PARTITIONS, headers=spoofed)
        assert r.status_code == 429  # an address the outsider writes itself: not believed
        for path in OWN_PATHS:
            r = await outsider.get(path)
            assert r.status_code == 403, (path, r.status_code)
        assert (await local.get("/_cacheproxy/health")).status_code == 200
        assert (await local.get("/_cacheproxy/stats")).status_code == 200


async def test_shipped_haproxy_config_forwards_clients_and_guards_own_endpoints(
    site: Callable[..., Site],
) -> None:
    """Behind the shipped haproxy.cfg (before: no ``option forwardfor``, so
    every client was the balancer and 30 failures locked out the site)."""
    s = site(replicas=1)  # one guard: the failures all meet in one process
    await _check_balancer(s.lb.url, settings.Settings().auth_fail_limit)


async def test_shipped_nginx_config_forwards_clients_and_guards_own_endpoints(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    s = site(replicas=1)
    nginx = Nginx(tmp_path / "nginx", [p.port for p in s.replicas]).start()
    try:
        await _check_balancer(nginx.url, settings.Settings().auth_fail_limit)
    finally:
        nginx.stop()


def test_docker_healthcheck_command_probes_a_replica(site: Callable[..., Site]) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"uv sync --locked --no-dev", text), "installs exactly the lock"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user, "runs as root"
    assert user[-1].split(":")[0] not in ("root", "0")
    # HEALTHCHECK <options> \ (newline) CMD ["python", ...]
    match = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", text, re.M)
    assert match is not None
    argv = json.loads(match.group(1))
    assert argv[0] == "python"
    argv[0] = sys.executable
    s = site(replicas=1)
    env = {
        "CACHEPROXY_PORT": str(s.replicas[0].port),
        "CACHEPROXY_UPSTREAM": "http://127.0.0.1:6820",
        "PATH": "/usr/bin:/bin",
    }
    ok = subprocess.run(argv, cwd=REPO, env=env, check=False, timeout=30)
    assert ok.returncode == 0
    s.replicas[0].stop()
    down = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False, timeout=30)
    assert down.returncode != 0


def _env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (REPO / "config" / "cacheproxy.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def test_env_example_names_only_real_options_and_loads() -> None:
    env = _env_example()
    known = {f"CACHEPROXY_{f.upper()}" for f in settings.Settings.model_fields}
    assert set(env) <= known, set(env) - known
    loaded = settings.load(env=env)
    assert loaded.redis_url.startswith("redis://")
    assert loaded.workers >= 1


def test_systemd_unit_runs_unprivileged_with_the_env_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "config" / "cacheproxy.service")
    service = unit["Service"]
    assert service["User"] not in ("root", "0")
    assert service["EnvironmentFile"].lstrip("-") == "/etc/cacheproxy/cacheproxy.env"
    assert shlex.split(service["ExecStart"])[-1] == "serve"
    assert service["NoNewPrivileges"] == "yes"
    # Redis is optional at run time: ordered after it, never bound to it.
    assert "redis" not in unit["Unit"].get("Requires", "")
    assert "redis" not in unit["Unit"].get("BindsTo", "")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
