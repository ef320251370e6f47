"""report.json and report.md: the numbers, and the same numbers for people."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_ID = "cacheproxy-bench-report/1"


def load_schema() -> dict[str, Any]:
    text = resources.files("cacheproxy.bench").joinpath("report_schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate(report: dict[str, Any]) -> list[str]:
    """Schema errors (empty when valid, or when jsonschema is not installed).

    jsonschema is a test dependency, not a runtime one, hence the lazy import.
    """
    try:
        jsonschema: Any = importlib.import_module("jsonschema")
    except ImportError:
        return []
    validator = jsonschema.Draft202012Validator(load_schema())
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(report)
    ]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count() or 0,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "hostname": platform.node(),
    }


def _point(r: dict[str, Any]) -> tuple[int, str | None]:
    """What a run is compared within: its user count and workload."""
    return r["users"], r.get("workload")


def add_comparisons(runs: list[dict[str, Any]]) -> None:
    """Each run's upstream load and controller time relative to the direct run of the
    same users and workload."""
    direct = {_point(r): r for r in runs if r["target"] == "direct"}
    for r in runs:
        base = direct.get(_point(r))
        busy, base_busy = (r.get("controller") or {}).get("busy_s"), None
        if base is not None:
            base_busy = (base.get("controller") or {}).get("busy_s")
        if busy is not None:
            r["controller"]["busy_pct_of_direct"] = (
                round(100.0 * busy / base_busy, 2) if base_busy else None
            )
        if base is None or r["target"] == "direct":
            r["reduction_factor"] = 1.0 if r["target"] == "direct" else None
            r["upstream_pct_of_direct"] = 100.0 if r["target"] == "direct" else None
            continue
        up, base_up = r["upstream_requests"], base["upstream_requests"]
        r["reduction_factor"] = round(base_up / up, 2) if up else None
        r["upstream_pct_of_direct"] = round(100.0 * up / base_up, 2) if base_up else None


UPSTREAM_TARGET_PCT = 5.0
"""The project's target: through the proxy, at most 5% of direct's upstream requests."""
USER_UPSTREAM_TARGET_PCT = 15.0
"""Per-user workload without local JWT verification (issue 17): each credential's
first request proves it to slurmrestd, so at most 15%."""
USER_BUSY_TARGET_PCT = 10.0
"""Per-user workload: simulated controller busy time at most 10% of direct's."""


def _upstream_target(r: dict[str, Any], jwt_verify: bool, nothing_private: bool) -> float | None:
    """The upstream target of a run (None: the issue sets none, e.g. per-user
    clients on a site whose PrivateData hides something)."""
    if r.get("workload") != "user":
        return UPSTREAM_TARGET_PCT
    if not nothing_private:
        return None
    return UPSTREAM_TARGET_PCT if jwt_verify else USER_UPSTREAM_TARGET_PCT


def target_checks(
    runs: Sequence[dict[str, Any]], jwt_verify: bool = False, nothing_private: bool = True
) -> list[dict[str, Any]]:
    """The project's targets, per caching run against the direct run at the same users
    (``jwt_verify``: the proxy verified the clients' JWTs locally; ``nothing_private``:
    PrivateData none, where the per-user upstream targets apply)."""
    direct = {_point(r): r for r in runs if r["target"] == "direct"}
    out: list[dict[str, Any]] = []
    for r in runs:
        base = direct.get(_point(r))
        if r["target"] == "direct" or base is None:
            continue
        pct = r.get("upstream_pct_of_direct")
        where = {"target": r["target"], "users": r["users"]}
        if "workload" in r:
            where["workload"] = r["workload"]
        lat, base_lat = r["latency_ms"], base["latency_ms"]
        limit = _upstream_target(r, jwt_verify, nothing_private)
        busy = (r.get("controller") or {}).get("busy_pct_of_direct")
        if r.get("workload") == "user" and nothing_private and busy is not None:
            out.append(
                {
                    **where,
                    "check": f"controller busy <= {USER_BUSY_TARGET_PCT:g}% of direct",
                    "value": busy,
                    "pass": busy <= USER_BUSY_TARGET_PCT,
                }
            )
        if limit is not None:
            out.append(
                {
                    **where,
                    "check": f"upstream <= {limit:g}% of direct",
                    "value": pct,
                    "pass": pct is not None and pct <= limit,
                }
            )
        out += [
            {
                **where,
                "check": "client p50 below direct",
                "value": [lat["p50"], base_lat["p50"]],
                "pass": lat["p50"] < base_lat["p50"],
            },
            {
                **where,
                "check": "client p99 below direct",
                "value": [lat["p99"], base_lat["p99"]],
                "pass": lat["p99"] < base_lat["p99"],
            },
            {
                **where,
                "check": "no read-your-writes violation",
                "value": r["ryw_violations"],
                "pass": r["ryw_violations"] == 0,
            },
            {**where, "check": "no errors", "value": r["errors"], "pass": r["errors"] == 0},
        ]
    return out


def build(
    *,
    config: dict[str, Any],
    runs: list[dict[str, Any]],
    sweep: list[dict[str, Any]] | None = None,
    capacity: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    add_comparisons(runs)
    report: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "config": config,
        "runs": runs,
        "targets_met": target_checks(
            runs, bool(config.get("jwt_verify")), config.get("private_data") in (None, "none")
        ),
    }
    if sweep:
        report["sweep"] = sweep
    if capacity:
        report["capacity"] = capacity
    report["notes"] = list(notes)
    return report


def _f(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


TABLE_HEAD = (
    "| workload | target | users | client req/s | p50 ms | p95 ms | p99 ms | upstream req "
    "| upstream req/s | upstream vs direct | ctld busy s | busy vs direct | ctld lock wait s "
    "| hit ratio | coalesced | RYW violations | errors |"
)


def _ctld(r: dict[str, Any]) -> tuple[str, str, str]:
    """Controller busy s, busy vs direct, lock-wait s (– without the simulator)."""
    c = r.get("controller")
    if not c:
        return "–", "–", "–"
    pct = c.get("busy_pct_of_direct")
    return f"{c['busy_s']:.1f}", "–" if pct is None else f"{pct:.1f}%", f"{c['lock_wait_s']:.1f}"


def table(runs: Sequence[dict[str, Any]]) -> str:
    rows = [TABLE_HEAD, "|" + "---|" * 17]
    for r in runs:
        lat = r["latency_ms"]
        pct = r.get("upstream_pct_of_direct")
        factor = r.get("reduction_factor")
        vs = "–" if pct is None else f"{pct:.1f}% (÷{_f(factor)})"
        busy, busy_vs, wait = _ctld(r)
        rows.append(
            f"| {r.get('workload', '–')} | {r['target']} | {r['users']} "
            f"| {r['throughput_rps']:.1f} | {lat['p50']:.1f} "
            f"| {lat['p95']:.1f} | {lat['p99']:.1f} | {r['upstream_requests']} "
            f"| {r['upstream_rps']:.2f} | {vs} | {busy} | {busy_vs} | {wait} "
            f"| {r['hit_ratio']:.3f} | {r.get('coalesced', 0)} "
            f"| {r['ryw_violations']} / {r['ryw']['checks']} | {r['errors']} |"
        )
    return "\n".join(rows)


def route_table(runs: Sequence[dict[str, Any]]) -> str:
    """Per route: upstream requests and simulated controller busy/lock-wait seconds, one
    column group per run."""
    with_cost = [r for r in runs if r.get("controller")]
    if not with_cost:
        return ""
    routes = sorted({k for r in with_cost for k in r["controller"]["by_route"]})
    head = "| route | " + " | ".join(
        f"{r.get('workload', '')} {r['target']} req / busy s / wait s" for r in with_cost
    )
    rows = [head + " |", "|" + "---|" * (1 + len(with_cost))]
    for route in routes:
        cells = []
        for r in with_cost:
            c = r["controller"]["by_route"].get(route)
            cells.append(
                "–"
                if c is None
                else f"{c['requests']} / {c['busy_s']:.1f} / {c['lock_wait_s']:.1f}"
            )
        rows.append(f"| `{route}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def text_table(runs: Sequence[dict[str, Any]]) -> str:
    """The terminal version of :func:`table`."""
    head = (
        f"{'workload':<8} {'target':<7} {'users':>5} {'req/s':>7} {'p50ms':>7} {'p95ms':>7} "
        f"{'p99ms':>8} {'upstream':>8} {'up/s':>7} {'vs direct':>9} {'busy s':>7} "
        f"{'busy vs':>8} {'wait s':>7} {'hit':>6} {'coal':>5} {'RYW':>7} {'err':>4}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        lat = r["latency_ms"]
        pct = r.get("upstream_pct_of_direct")
        busy, busy_vs, wait = _ctld(r)
        lines.append(
            f"{r.get('workload', '–'):<8} {r['target']:<7} {r['users']:>5} "
            f"{r['throughput_rps']:>7.1f} {lat['p50']:>7.1f} "
            f"{lat['p95']:>7.1f} {lat['p99']:>8.1f} {r['upstream_requests']:>8} "
            f"{r['upstream_rps']:>7.2f} {('–' if pct is None else f'{pct:.1f}%'):>9} "
            f"{busy:>7} {busy_vs:>8} {wait:>7} "
            f"{r['hit_ratio']:>6.3f} {r.get('coalesced', 0):>5} "
            f"{str(r['ryw_violations']) + '/' + str(r['ryw']['checks']):>7} {r['errors']:>4}"
        )
    return "\n".join(lines)


def _generator_lines(runs: Sequence[dict[str, Any]]) -> list[str]:
    out = [
        "| target | users | generator CPU | schedule lag p50 / p99 / max ms | late "
        "| target CPU s | simulator CPU s | other processes (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        g = r["generator"]
        lag = g["lag_ms"]
        cpu = r.get("process_cpu_seconds", {})
        other = (r.get("machine") or {}).get("other_cores")
        out.append(
            f"| {r['target']} | {r['users']} | {g['cpu_util']:.0%} "
            f"| {lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f} "
            f"| {'**yes**: ' + g['why'] if g['saturated'] else 'no'} "
            f"| {_f(cpu.get(r['target']), 2) if r['target'] != 'direct' else '–'} "
            f"| {_f(cpu.get('simulator'), 2)} | {_f(other, 2)} |"
        )
    return out


def _users_text(cfg: dict[str, Any], wl: dict[str, Any]) -> str:
    counts = cfg.get("user_counts") or [wl["users"]]
    if len(counts) > 1:
        return "sweep over " + ", ".join(str(c) for c in counts) + " users"
    return f"{counts[0]} users"


def _private_data_text(cfg: dict[str, Any]) -> str:
    """The site's ``PrivateData`` the run had: it decides which routes the proxy shares."""
    words = cfg.get("private_data")
    upstream = cfg["mode"] == "upstream"
    if words is not None:
        who = "the proxy was told" if upstream else "the simulator and the proxy"
        return f"PrivateData: **{words}** ({who})."
    if upstream:
        return "PrivateData: **unset** (the proxy was not told: every route per user)."
    return (
        "PrivateData: **unset** (the simulator has Slurm's default, nothing private; "
        "the proxy was not told: every route per user)."
    )


def markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    cfg = report["config"]
    wl = cfg["workload"]
    m = report["machine"]
    lines = [
        "# cacheproxy bench report",
        "",
        f"{report['created']} on {m['hostname']}: {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['platform']}, Python {m['python']}.",
        "",
        f"Command: `{cfg.get('command', 'cacheproxy bench')}`",
        "",
        f"Mode: **{cfg['mode']}**; targets: {', '.join(cfg['targets'])}; "
        f"{_users_text(cfg, wl)}, {wl['duration']:g} s of arrivals per run, "
        f"API {wl['api_version']}.",
        "",
        _private_data_text(cfg),
        "",
        *(
            [f"**This run is not valid: {'; '.join(report['crashed'])}.**", ""]
            if report.get("crashed")
            else []
        ),
        "## Results",
        "",
        table(report["runs"]),
        "",
        "Latency is measured from each request's scheduled time (open loop). "
        "*upstream vs direct* is the target's upstream requests as a share of the direct "
        "run's (÷ = reduction factor). *hit ratio* counts GETs answered from the cache "
        "(`Cache-Status: hit`); *coalesced* are misses that joined another request's upstream "
        "fetch. RYW = read-your-writes violations / checks. *ctld busy s* is the simulated "
        "controller's service time (lock held, or slurmdbd), *lock wait s* the time requests "
        "queued for it (the simulator's `/_sim/stats`).",
        "",
    ]
    routes = route_table(report["runs"])
    if routes:
        lines += ["## Controller cost per route", "", routes, ""]
    checks = report.get("targets_met") or []
    if checks:
        lines += ["## Targets", ""]
        for c in checks:
            mark = "✅" if c["pass"] else "❌"
            wl = f", {c['workload']} workload" if c.get("workload") else ""
            lines.append(
                f"- {mark} {c['target']} ({c['users']} users{wl}): {c['check']} ({c['value']})"
            )
        lines.append("")
    cap = report.get("capacity")
    if cap:
        lines += [
            "## Capacity",
            "",
            f"Upstream budget: **{cap['upstream_budget_rps']:g} requests/s**.",
            "",
        ]
        for target, c in cap["max_users"].items():
            note = " (extrapolated beyond the largest measured count)" if c["extrapolated"] else ""
            if c.get("saturated_at"):
                note += (
                    f"; saturated at {c['saturated_at']} users (errors or late arrivals), "
                    "where measured load understates demand"
                )
            lines.append(f"- {target}: at most **{c['users']} users**{note}")
        lines.append("")
    lines += ["## Upstream counts", ""]
    sources = sorted({r["upstream_source"] for r in report["runs"]})
    lines.append(f"Upstream request counts come from: {', '.join(sources)}.")
    lines += ["", "## Generator health", "", *_generator_lines(report["runs"]), ""]
    lines += ["## Workload", "", "```json", json.dumps(wl, indent=2), "```", ""]
    if report.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def write(outdir: Path, report: dict[str, Any], plots: Sequence[str] = ()) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (outdir / "report.md").write_text(markdown(report, plots))
