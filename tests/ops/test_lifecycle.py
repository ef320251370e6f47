"""SIGHUP reloads a real ``cacheproxy serve`` (one process, and ``--workers
2``) in front of the simulator: new rules take effect, a broken rules file
keeps the running ones and says so in one line; the startup line and the
application's log lines are JSON; the access log names the rule.  Every
process is started here on loopback and stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ops.deploy_path import json_lines
from tests.ops.test_multiworker import USER, eventually, started
from tests.store.servers import free_port

PARTITIONS = "/slurm/v0.0.43/partitions"


def rules(name: str, cache: bool) -> str:
    body = f'[[rule]]\nname = "{name}"\nmethods = ["GET"]\npath = "/slurm/{{v}}/partitions"\n'
    return body + ("ttl = 300\n" if cache else "cache = false\n")


@contextlib.contextmanager
def simulator(tmp_path: Path) -> Iterator[str]:
    log = tmp_path / "simulator.log"
    args = ["simulate", "--port", "0", "--jobs", "5", "--nodes", "2", "--cost-model", "none"]
    with started(args, log) as sim:
        assert sim.stdout is not None
        line = sim.stdout.readline().decode()
        assert line.startswith("listening on http://"), log.read_text()
        yield line.split()[-1]


def rule_of_next_request(base: str, access: Path) -> str:
    """The rule the access log names for one more request (new connection:
    with several workers, any of them)."""
    rid = os.urandom(8).hex()
    with httpx.Client(base_url=base) as c:
        r = c.get(PARTITIONS, headers={**USER, "X-Request-ID": rid})
        assert r.status_code == 200, r.text
    for _ in range(100):
        for line in json_lines(access):
            if line.get("request_id") == rid:
                return str(line["rule"])
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {rid}")


def reload_done(log: Path, mark: int, workers: int) -> bool:
    """Every process serves what it read after the SIGHUP: one process
    logged its reload; with workers, uvicorn retired every old one."""
    lines = json_lines(log)[mark:]
    if workers == 1:
        return any(x.get("event") == "reload" for x in lines)
    retired = [x for x in lines if str(x.get("message")).startswith("Terminated child process")]
    return len(retired) == workers


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_rules_and_refuses_a_broken_file(tmp_path: Path, workers: int) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(rules("parts-a", cache=False))
    access, proxy_log = tmp_path / "access.log", tmp_path / "proxy.log"
    with simulator(tmp_path) as upstream:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ["serve", "--upstream", upstream, "--port", str(port)]
        serve += ["--config", str(rules_file), "--access-log", "--workers", str(workers)]
        with (
            access.open("wb") as out,
            proxy_log.open("wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "cacheproxy", *serve], stdout=out, stderr=err
            )
        logs = [proxy_log, access]
        try:
            eventually(
                lambda: httpx.get(base + "/_cacheproxy/health").status_code == 200,
                "the proxy did not start",
                logs,
            )
            start = [x for x in json_lines(proxy_log) if x.get("event") == "start"]
            assert len(start) == 1, proxy_log.read_text()
            assert start[0]["rules"] == 1
            assert start[0]["upstream"] == upstream
            assert start[0]["tiers"] == "memory"
            assert start[0]["workers"] == workers
            assert start[0]["version"]
            assert start[0]["level"] == "info"
            assert rule_of_next_request(base, access) == "parts-a"

            rules_file.write_text(rules("parts-b", cache=True))
            mark = len(json_lines(proxy_log))
            os.kill(proc.pid, signal.SIGHUP)
            eventually(
                lambda: reload_done(proxy_log, mark, workers),
                "the reload did not finish",
                logs,
            )
            assert all(rule_of_next_request(base, access) == "parts-b" for _ in range(6))
            assert proc.poll() is None
            with httpx.Client(base_url=base) as c:  # parts-b caches: a hit at the latest
                statuses = [c.get(PARTITIONS, headers=USER).headers["cache-status"] for _ in "ab"]
            assert any("hit" in s for s in statuses) or workers > 1, statuses

            before = len(proxy_log.read_text(errors="replace").splitlines())
            rules_file.write_text('[[rule]]\nname = "broken"\npath = 12\n')
            os.kill(proc.pid, signal.SIGHUP)
            eventually(
                lambda: any(
                    "refused" in str(x.get("message")) or "not started" in str(x.get("message"))
                    for x in json_lines(proxy_log)
                ),
                "the broken file was not reported",
                logs,
            )
            assert proc.poll() is None, "SIGHUP with a broken file stopped the proxy"
            for _ in range(4):
                assert rule_of_next_request(base, access) == "parts-b"
            new_lines = proxy_log.read_text(errors="replace").splitlines()[before:]
            assert "Traceback" not in "\n".join(new_lines), "\n".join(new_lines)
            ours = [x for x in json_lines(proxy_log)[-len(new_lines) :] if x["level"] == "error"]
            mine = [x for x in ours if x["logger"] == "cacheproxy"]
            assert len(mine) == 1, new_lines
            assert "rules.toml: line 1" in mine[0]["message"]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # drained, then uvicorn ends by the signal it got (systemd: a clean stop)
        assert proc.returncode in (0, -signal.SIGTERM), proxy_log.read_text()
        assert "Finished server process" in proxy_log.read_text()


def user(n: int) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": f"user00{n}", "X-SLURM-USER-TOKEN": f"sim-token-user00{n}"}


def cache_status(base: str, who: dict[str, str]) -> str:
    with httpx.Client(base_url=base) as c:
        r = c.get(PARTITIONS, headers=who)
        assert r.status_code == 200, r.text
        return r.headers["cache-status"]


def partitions_scope(base: str) -> str:
    routes = httpx.get(base + "/_cacheproxy/stats").json()["scopes"]["routes"]
    return next(str(d["scope"]) for d in routes if d["route"] == "partitions")


@pytest.mark.slow
def test_sighup_changes_private_data_live(tmp_path: Path) -> None:
    """The site's PrivateData is reloaded with SIGHUP: the partitions route
    turns shared (another accepted user hits the first one's entry), a bad
    word keeps the running scopes with one line, and PrivateData=partitions
    turns it back to per user."""
    settings = tmp_path / "settings.toml"
    settings.write_text("")  # PrivateData not configured: every route per user
    proxy_log = tmp_path / "proxy.log"
    with simulator(tmp_path) as upstream:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ["serve", "--upstream", upstream, "--port", str(port)]
        with started([*serve, "--settings", str(settings)], proxy_log) as proc:
            logs = [proxy_log]

            def reload(text: str) -> list[dict[str, Any]]:
                settings.write_text(text)
                mark = len(json_lines(proxy_log))
                os.kill(proc.pid, signal.SIGHUP)
                eventually(
                    lambda: any(
                        x.get("event") == "reload" or "refused" in str(x.get("message"))
                        for x in json_lines(proxy_log)[mark:]
                    ),
                    "the reload was not logged",
                    logs,
                )
                return json_lines(proxy_log)[mark:]

            eventually(
                lambda: httpx.get(base + "/_cacheproxy/health").status_code == 200,
                "the proxy did not start",
                logs,
            )
            (start,) = [x for x in json_lines(proxy_log) if x.get("event") == "start"]
            assert start["scopes"]["shared"] == 0
            assert start["scopes"]["setting"] is None
            assert partitions_scope(base) == "user"
            assert "fwd=miss" in cache_status(base, user(1))
            assert "fwd=miss" in cache_status(base, user(2))  # per user (and accepted)

            reload('private_data = "none"\n')
            assert partitions_scope(base) == "shared"
            assert "fwd=miss" in cache_status(base, user(1))  # the shared entry's fill
            assert "hit" in cache_status(base, user(2))  # another accepted user: shared
            # user003, never accepted: proved by the cheap question, then shared
            assert "hit" in cache_status(base, user(3))

            lines = reload('private_data = "bogus"\n')
            errors = [x for x in lines if x["level"] == "error"]
            assert len(errors) == 1, lines
            assert "private_data" in errors[0]["message"], errors
            assert "refused" in errors[0]["message"], errors
            assert partitions_scope(base) == "shared"
            assert "hit" in cache_status(base, user(2))

            lines = reload('private_data = "partitions"\n')
            assert not [x for x in lines if x["level"] == "error"], lines
            assert partitions_scope(base) == "user"
            # user003 is accepted and never asked per user: a miss of its own
            assert "fwd=miss" in cache_status(base, user(3))
            assert proc.poll() is None
