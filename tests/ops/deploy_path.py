"""docs/DEPLOY.md's single-host path, followed by a test: install from the
lock into a fresh virtual environment, check the settings, start under the
shipped env file (config/cacheproxy.env.example, with this host's
addresses) with two workers, a real Redis and the unit's multiprocess
metrics directory, serve, scrape, reload with SIGHUP, drain with SIGTERM.

Used by tests/ops/test_deploy.py (the simulator) and
tests/realslurm/test_deploy.py (a real 22.05 slurmrestd).  Every process is
started here and stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.ops.conftest import samples, value
from tests.store.servers import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
"""Generous bound on starts, worker syncs and drains (each takes about 1 s)."""


def uv() -> str:
    """uv as scripts/setup.sh installs it (``.tools/``), or ``$UV``, or on PATH."""
    for candidate in (
        os.environ.get("UV"),
        str(REPO / ".tools" / "bin" / "uv"),
        shutil.which("uv"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise AssertionError("uv is missing: scripts/setup.sh installs it into .tools/")


def install(venv: Path) -> Path:
    """DEPLOY.md step "Install": exactly the locked versions, no dev tools,
    not editable; offline, from the cache setup.sh filled (``.tools/uv-cache``,
    whatever ``UV_NO_CACHE`` says; tests use loopback only)."""
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    cache = REPO / ".tools" / "uv-cache"
    if cache.is_dir():
        env["UV_CACHE_DIR"] = str(cache)
        env.pop("UV_NO_CACHE", None)
    done = subprocess.run(
        [uv(), "sync", "--locked", "--no-dev", "--no-editable"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    binary = venv / "bin" / "cacheproxy"
    assert binary.is_file()
    assert not (venv / "bin" / "pytest").exists()  # --no-dev: no test tools in production
    return binary


def shipped_env() -> dict[str, str]:
    """config/cacheproxy.env.example's settings (as systemd's EnvironmentFile reads them)."""
    env: dict[str, str] = {}
    for line in (REPO / "config" / "cacheproxy.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, val = line.partition("=")
            env[key] = val
    return env


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                out.append(obj)
    return out


def eventually(check: Callable[[], bool], what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if check():
                return
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    raise AssertionError(f"{what} within {DEADLINE:g} s\n{tails}")


@dataclass
class Upstream:
    """What the path needs of a slurmrestd: where, a user's headers, an API
    version, and a way to hold requests in flight (to see a stop drain)."""

    url: str
    headers: Mapping[str, str]
    api: str
    pause: Callable[[], None]
    resume: Callable[[], None]


@contextlib.contextmanager
def redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()


def follow(tmp_path: Path, upstream: Upstream) -> dict[str, Any]:
    """The whole path; returns what it saw (for the caller's own checks)."""
    binary = install(tmp_path / "opt-cacheproxy")
    rules = tmp_path / "etc" / "rules.toml"
    rules.parent.mkdir()
    shutil.copy(REPO / "config" / "rules.toml", rules)
    run_dir = tmp_path / "run" / "cacheproxy"  # the unit's RuntimeDirectory
    run_dir.mkdir(parents=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "journal.log"
    logs = [stderr, stdout]
    with redis(tmp_path / "redis") as red:
        env = {
            "PATH": "/usr/bin:/bin",
            **shipped_env(),
            # this host's addresses, as DEPLOY.md says to edit them
            "CACHEPROXY_UPSTREAM": upstream.url,
            "CACHEPROXY_PORT": str(port),
            "CACHEPROXY_REDIS_URL": red.url,
            "CACHEPROXY_HMAC_KEY": os.urandom(32).hex(),
            "CACHEPROXY_CONFIG": str(rules),
            "CACHEPROXY_ACCESS_LOG": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),  # as the unit sets it
        }
        check = subprocess.run(
            [str(binary), "check-config", "--settings"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert check.stderr.strip().endswith("settings OK")
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=out, stderr=err)
        try:
            return _serve_scrape_reload_drain(proc, base, upstream, rules, logs)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _get(base: str, path: str, headers: Mapping[str, str]) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=DEADLINE) as c:  # a new connection: any worker
        return c.get(path, headers=dict(headers))


def _serve_scrape_reload_drain(
    proc: subprocess.Popen[bytes], base: str, upstream: Upstream, rules: Path, logs: list[Path]
) -> dict[str, Any]:
    journal = logs[0]
    partitions = f"/slurm/{upstream.api}/partitions"

    def healthy() -> bool:
        return httpx.get(base + "/_cacheproxy/health").status_code == 200

    eventually(healthy, "the proxy did not start", logs)
    start = [x for x in json_lines(journal) if x.get("event") == "start"]
    assert len(start) == 1, journal.read_text()
    assert start[0]["workers"] == 2
    assert start[0]["tiers"].startswith("memory+redis redis://127.0.0.1:")
    assert start[0]["rules_file"] == str(rules)

    # serve: the first answer is fetched, the rest come from the cache
    n = 12
    answers = [_get(base, partitions, upstream.headers) for _ in range(n)]
    assert {r.status_code for r in answers} == {200}, answers[0].text
    assert len({r.content for r in answers}) == 1
    assert sum("hit" in r.headers["cache-status"] for r in answers) >= n - 2  # one miss per worker

    # scrape: every worker's counts in one scrape (the multiprocess directory)
    def all_counted() -> bool:
        m = samples(httpx.get(base + "/_cacheproxy/metrics").text)
        got = value(m, "cacheproxy_http_responses_total", route="partitions", code="2xx")
        return got == n

    eventually(all_counted, f"the scrape did not count all {n} responses", logs)
    ready = httpx.get(base + "/_cacheproxy/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["upstream"].startswith("ok: reachable")

    # reload: a renamed rule takes effect on SIGHUP (uvicorn replaces the workers)
    rules.write_text(rules.read_text().replace('name = "partitions"', 'name = "partitions-v2"', 1))
    mark = len(json_lines(journal))
    os.kill(proc.pid, signal.SIGHUP)

    def every_worker_replaced() -> bool:  # uvicorn logs each old worker it retires
        lines = json_lines(journal)[mark:]
        return sum(str(x.get("message")).startswith("Terminated child") for x in lines) == 2

    eventually(every_worker_replaced, "the rolling restart did not finish", logs)

    def renamed() -> bool:
        _get(base, partitions, upstream.headers)
        m = samples(httpx.get(base + "/_cacheproxy/metrics").text)
        return value(m, "cacheproxy_http_responses_total", route="partitions-v2", code="2xx") > 0

    eventually(renamed, "the reloaded rules did not take effect", logs)
    # ... and a broken file keeps them, with one line, no traceback
    rules.write_text("[[rule]]\nname = 'broken'\n")
    os.kill(proc.pid, signal.SIGHUP)
    eventually(
        lambda: any("not started" in str(x.get("message")) for x in json_lines(journal)),
        "the broken rules file was not reported",
        logs,
    )
    assert proc.poll() is None
    assert _get(base, partitions, upstream.headers).status_code == 200

    # drain: SIGTERM while a request waits for slurmrestd; it still completes
    held: dict[str, httpx.Response] = {}
    nodes = f"/slurm/{upstream.api}/nodes"
    upstream.pause()
    try:
        waiter = threading.Thread(
            target=lambda: held.update(r=_get(base, nodes, upstream.headers)), daemon=True
        )
        waiter.start()
        eventually(lambda: _in_flight(base) > 0, "the held request did not go upstream", logs)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the proxy is draining: it must not have cut the request
        assert proc.poll() is None, "the proxy exited with a request in flight"
    finally:
        upstream.resume()
    waiter.join(timeout=DEADLINE)
    assert held["r"].status_code == 200, held["r"].text
    proc.wait(timeout=DEADLINE)
    assert proc.returncode in (0, -signal.SIGTERM), journal.read_text()[-3000:]
    text = journal.read_text()
    assert "Traceback" not in text, text[-3000:]
    return {"start": start[0], "journal": text}


def _in_flight(base: str) -> float:
    """Requests waiting for slurmrestd, over every worker (as last synced)."""
    m = samples(httpx.get(base + "/_cacheproxy/metrics").text)
    names = ("cacheproxy_upstream_in_flight", "cacheproxy_upstream_fetches_in_flight")
    return sum(v for (name, _), v in m.items() if name in names)
