"""Both workloads by default, PrivateData to the simulator, controller cost per route."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cacheproxy.bench import cli, report, runner


def _args(*argv: str) -> Any:
    return cli._parser().parse_args(list(argv))


def test_default_runs_both_workloads() -> None:
    assert cli.workloads(_args()) == ["service", "user"]
    assert cli.workloads(_args("--workloads", "user")) == ["user"]
    assert cli.workloads(_args("--dashboard-identity", "service")) == ["service"]
    with pytest.raises(ValueError, match="--workloads"):
        cli.workloads(_args("--workloads", "portal"))
    assert cli.main(["--workloads", "portal"]) == 2


def test_private_data_configures_the_simulator_and_the_proxy() -> None:
    sim, proxy = cli._process_args(_args("--private-data", "jobs,nodes", "--sim-arg=--seed=3"))
    assert sim == ["--seed=3", "--private-data=jobs,nodes"]
    assert proxy == ["--private-data=jobs,nodes"]


def test_private_data_defaults_to_slurms_default_for_the_simulator_only() -> None:
    """Slurm's default PrivateData is empty: the simulated cluster and the
    proxy have ``none`` unless told; ``unset`` runs the proxy untold; a real
    slurmrestd's PrivateData is not known to the bench, so the proxy is not
    told by default."""
    none = ["--private-data=none"]
    assert cli._process_args(_args()) == (none, none)
    assert cli._process_args(_args("--private-data", "unset")) == ([], [])
    real = ("--upstream", "http://slurm.test:6820", "--user", "u", "--token", "t")
    assert cli._process_args(_args(*real)) == ([], [])
    assert cli._process_args(_args(*real, "--private-data", "jobs"))[1] == ["--private-data=jobs"]
    help_text = cli._parser().format_help()
    assert "no such option" not in help_text
    assert "unset" in help_text


def test_controller_cost_from_sim_stats_deltas() -> None:
    detail = {
        "by_route": {"GET /slurm/{v}/jobs": 4, "GET /slurm/{v}/ping": 1},
        "busy_by_route": {"GET /slurm/{v}/jobs": 0.5, "GET /slurm/{v}/ping": 0.002},
        "lock_wait_by_route": {"GET /slurm/{v}/jobs": 1.25},
        "busy_seconds": 0.502,
        "lock_wait_seconds": 1.25,
    }
    cost = runner.controller_cost(detail)
    assert cost == {
        "busy_s": 0.502,
        "lock_wait_s": 1.25,
        "by_route": {
            "GET /slurm/{v}/jobs": {"requests": 4, "busy_s": 0.5, "lock_wait_s": 1.25},
            "GET /slurm/{v}/ping": {"requests": 1, "busy_s": 0.002, "lock_wait_s": 0.0},
        },
    }
    assert runner.controller_cost({}) is None  # a real upstream


def _run(target: str, workload: str, upstream: int, busy: float) -> dict[str, Any]:
    return {
        "target": target,
        "workload": workload,
        "users": 200,
        "client_requests": 2000,
        "upstream_requests": upstream,
        "upstream_source": "simulator",
        "throughput_rps": 80.0,
        "upstream_rps": upstream / 25,
        "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0},
        "hit_ratio": 0.0,
        "ryw_violations": 0,
        "ryw": {"checks": 1, "violations": 0},
        "errors": 0,
        "generator": {
            "cpu_util": 0.3,
            "saturated": False,
            "why": "",
            "lag_ms": {"p50": 0.1, "p99": 1.0, "max": 2.0},
        },
        "controller": {
            "busy_s": busy,
            "lock_wait_s": busy / 2,
            "by_route": {
                "GET /slurm/{v}/jobs": {"requests": upstream, "busy_s": busy, "lock_wait_s": 0.0}
            },
        },
    }


def test_report_compares_each_workload_with_its_own_direct_run(tmp_path: Path) -> None:
    runs = [
        _run("direct", "service", 2000, 80.0),
        _run("proxy", "service", 40, 2.0),
        _run("direct", "user", 2200, 88.0),
        _run("proxy", "user", 2178, 88.0),
    ]
    config = {
        "mode": "simulator",
        "targets": ["direct", "proxy"],
        "workload": {"users": 200, "duration": 25.0, "api_version": "v0.0.43"},
        "workloads": ["service", "user"],
        "private_data": None,
    }
    rep = report.build(config=config, runs=copy.deepcopy(runs), notes=[])
    assert report.validate(rep) == []
    by = {(r["workload"], r["target"]): r for r in rep["runs"]}
    assert by["service", "proxy"]["upstream_pct_of_direct"] == 2.0
    assert by["user", "proxy"]["upstream_pct_of_direct"] == 99.0
    assert by["service", "proxy"]["controller"]["busy_pct_of_direct"] == 2.5
    assert by["user", "proxy"]["controller"]["busy_pct_of_direct"] == 100.0
    checks = [c for c in rep["targets_met"] if c["check"].startswith("upstream")]
    assert {(c["workload"], c["pass"]) for c in checks} == {("service", True), ("user", False)}
    # Issue 17's targets for per-user clients: upstream <= 15% without local
    # JWT verification (each credential's first request proves it), <= 5%
    # with it; controller busy <= 10% of direct.
    user = _run("proxy", "user", 300, 8.0)  # 13.6% of direct, busy 9.1%
    both = [_run("direct", "user", 2200, 88.0), user]
    checks = {c["check"]: c["pass"] for c in report.target_checks(report_runs(both))}
    assert checks["upstream <= 15% of direct"] is True
    assert checks["controller busy <= 10% of direct"] is True
    checks = {c["check"]: c["pass"] for c in report.target_checks(report_runs(both), True)}
    assert checks["upstream <= 5% of direct"] is False
    checks = {c["check"] for c in report.target_checks(report_runs(both), False, False)}
    assert not any(c.startswith(("upstream", "controller")) for c in checks)  # PrivateData=jobs
    report.write(tmp_path, rep)
    md = (tmp_path / "report.md").read_text()
    assert "| user | proxy | 200 |" in md
    assert "PrivateData: **unset** (the simulator has Slurm's default" in md
    config["private_data"] = "none"
    md = report.markdown(report.build(config=config, runs=copy.deepcopy(runs), notes=[]))
    assert "PrivateData: **none** (the simulator and the proxy)." in md
    assert "## Controller cost per route" in md
    assert "`GET /slurm/{v}/jobs` | 2000 / 80.0 / 0.0 |" in md
    assert "busy vs" in report.text_table(rep["runs"])


def report_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs with the comparisons a report adds (upstream and busy vs direct)."""
    runs = copy.deepcopy(runs)
    report.add_comparisons(runs)
    return runs
