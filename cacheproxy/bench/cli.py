"""``cacheproxy bench``: one command, no Slurm needed.

With no arguments it starts the simulator and the proxy on free loopback
ports, replays the default workload straight at the simulator and then
through the proxy (about a minute in all), prints the table and writes
``bench-results/<stamp>/`` (report.json, report.md, PNG plots, logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from cacheproxy.bench import capacity, identities, plots, procs, report, runner, slurmapi, workload
from cacheproxy.bench.httpclient import DEFAULT_ACCEPT_ENCODING
from cacheproxy.bench.loadgen import Tick

EXIT_CRASHED = 3
"""Exit status when the simulator, the proxy or nginx died during a run (the
report is still written, and says which)."""
OTHER_LOAD_NOTE = 0.25
"""Cores used by processes outside the bench above which the report warns."""
DEFAULT_BUDGET = 20.0
"""Upstream requests/s a site is willing to let REST clients put on slurmctld."""
WORKLOADS = ("service", "user")
"""``service``: dashboards behind one portal service account; ``user``: per-user clients."""
SLURM_DEFAULT_PRIVATE_DATA = "none"
"""Slurm's default ``PrivateData`` (slurm.conf and slurmdbd.conf): empty, nothing
private.  The simulated cluster has it unless ``--private-data`` says otherwise."""
UNSET = "unset"
"""``--private-data unset``: the proxy is not told (every route per user, its own
default) and the simulator keeps Slurm's default."""


def private_data(args: argparse.Namespace) -> str | None:
    """The PrivateData words the simulator and the proxy are told (None: not
    told).  Against the simulator the default is Slurm's (``none``); against a
    real slurmrestd the bench cannot know the site's, so by default the proxy
    is not told."""
    if args.private_data is None:
        return SLURM_DEFAULT_PRIVATE_DATA if args.upstream is None else None
    return None if args.private_data == UNSET else args.private_data


def workloads(args: argparse.Namespace) -> list[str]:
    """The workloads to run, in order (``--dashboard-identity`` picks one)."""
    if args.dashboard_identity is not None:
        return [args.dashboard_identity]
    out = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in out if w not in WORKLOADS]
    if bad or not out:
        raise ValueError(f"--workloads: expected service and/or user, got {args.workloads!r}")
    return list(dict.fromkeys(out))


def _process_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Simulator and proxy arguments, with ``--private-data`` where it applies."""
    sim_args, proxy_args = list(args.sim_arg), list(args.proxy_arg)
    words = private_data(args)
    if words is not None:
        sim_args.append(f"--private-data={words}")
        proxy_args.append(f"--private-data={words}")
    return sim_args, proxy_args


def _parser() -> argparse.ArgumentParser:
    d = workload.WorkloadSpec()
    p = argparse.ArgumentParser(
        prog="cacheproxy bench",
        description="Measure what the proxy does to controller load and client latency: the "
        "same open-loop workload straight at slurmrestd (or the built-in simulator) and through "
        "the proxy.",
        epilog="Exit status: 0 done, 1 could not run, 2 bad arguments, "
        f"{EXIT_CRASHED} a process under test crashed during a run (report written).",
    )
    p.add_argument("--users", type=int, default=d.users, help=f"simulated clients [{d.users}]")
    p.add_argument(
        "--duration",
        type=float,
        default=d.duration,
        help=f"seconds of arrivals per target and user count [{d.duration:g}]",
    )
    p.add_argument(
        "--api-version",
        default=d.api_version,
        choices=slurmapi.SUPPORTED_VERSIONS,
        help=f"slurmrestd API version [{d.api_version}]",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="workload and simulator seed")
    p.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results"),
        help="results go to OUTPUT/<stamp>/ [bench-results]",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print report.json to stdout (progress and table go to stderr)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=["nginx"],
        help="also run the workload through nginx proxy_cache",
    )
    p.add_argument(
        "--sweep",
        metavar="users=N,N,...",
        help="capacity planning: run every target at each user count",
    )
    p.add_argument(
        "--upstream-budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="REQS_PER_S",
        help=f"upstream requests/s the controller may take [{DEFAULT_BUDGET:g}]",
    )
    real = p.add_argument_group("a real slurmrestd (instead of the simulator)")
    real.add_argument(
        "--upstream", metavar="URL", help="slurmrestd base URL, e.g. http://host:6820"
    )
    real.add_argument("--user", help="X-SLURM-USER-NAME for every client")
    real.add_argument("--token", help="X-SLURM-USER-TOKEN for every client")
    real.add_argument("--token-file", type=Path, help="read the token from this file")
    real.add_argument(
        "--users-file",
        type=Path,
        help='JSON {"user": "token"}: clients take these identities round robin',
    )
    real.add_argument(
        "--allow-writes",
        action="store_true",
        help="submit and cancel jobs on the real cluster (off: read-only)",
    )
    w = p.add_argument_group("workload")
    w.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        metavar="service,user",
        help="which workloads to run, each direct and through the proxy: dashboards poll with "
        "one portal service account (service) and/or with each user's own credentials (user) "
        "[service,user]",
    )
    w.add_argument(
        "--dashboard-identity",
        choices=list(WORKLOADS),
        default=None,
        help="run this one workload only (same as --workloads with one word)",
    )
    w.add_argument(
        "--private-data",
        default=None,
        metavar="WORDS",
        help="the site's PrivateData words (e.g. jobs; none: nothing private), given to the "
        "simulator and to the proxy alike (`--private-data` of `cacheproxy simulate` and "
        f"`cacheproxy serve`); {UNSET}: the proxy is not told (every route per user) and the "
        "simulator keeps Slurm's default. Default: none (Slurm's default) against the "
        f"simulator; {UNSET} against a real --upstream, whose PrivateData the bench cannot know",
    )
    w.add_argument(
        "--submit-rate",
        type=float,
        default=d.submit_rate,
        help=f"submits per second, all users [{d.submit_rate:g}]",
    )
    w.add_argument(
        "--cancel-rate",
        type=float,
        default=d.cancel_rate,
        help=f"cancels per second, all users [{d.cancel_rate:g}]",
    )
    w.add_argument("--read-only", action="store_true", help="no submits or cancels")
    s = p.add_argument_group("processes")
    s.add_argument("--sim-jobs", type=int, default=300, help="simulator --jobs [300]")
    s.add_argument("--sim-nodes", type=int, default=100, help="simulator --nodes [100]")
    s.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra simulator argument (repeatable), e.g. --sim-arg=--cost-model=none",
    )
    s.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `cacheproxy serve` argument (repeatable)",
    )
    s.add_argument(
        "--drain",
        type=float,
        default=20.0,
        help="seconds in-flight requests get after the last arrival [20]",
    )
    s.add_argument("--timeout", type=float, default=30.0, help="per-request timeout [30]")
    s.add_argument(
        "--connections", type=int, default=256, help="generator connections per target [256]"
    )
    s.add_argument(
        "--accept-encoding",
        default=DEFAULT_ACCEPT_ENCODING,
        help=f"the clients' Accept-Encoding (identity: no compression) [{DEFAULT_ACCEPT_ENCODING}]",
    )
    s.add_argument(
        "--jwt-verify",
        action="store_true",
        help="simulator mode: the clients' tokens are HS256 JWTs and the proxy verifies "
        "them locally (--jwt-key)",
    )
    s.add_argument("--no-plots", action="store_true")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


class Progress:
    """One status line per second on a terminal, one every 5 s otherwise."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self._last = 0.0

    def log(self, msg: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        print(msg, file=self.out, flush=True)

    def tick(self, label: str, t: Tick) -> None:
        if self.quiet:
            return
        up = "?" if t.upstream is None else str(t.upstream)
        line = (
            f"[{label}] {t.elapsed:5.1f}/{t.duration:g}s  arrivals {t.arrivals}/{t.total_arrivals}"
            f"  responses {t.responses}  in flight {t.inflight}  errors {t.errors}"
            f"  upstream {up}"
        )
        if self.tty:
            self.out.write("\r\033[K" + line)
            self.out.flush()
        elif time.monotonic() - self._last >= 5.0:
            self._last = time.monotonic()
            print(line, file=self.out, flush=True)

    def end_line(self) -> None:
        if self.tty and not self.quiet:
            self.out.write("\n")
            self.out.flush()


def _identities(args: argparse.Namespace) -> identities.Identities | None:
    if args.upstream is None:
        return None
    if args.users_file is not None:
        return identities.from_users_file(args.users_file)
    token = args.token
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
        token = token.removeprefix("SLURM_JWT=")
    if not args.user or not token:
        raise ValueError("--upstream needs --user and --token (or --token-file, or --users-file)")
    return identities.single(args.user, token)


def _spec(args: argparse.Namespace) -> workload.WorkloadSpec:
    writes = not args.read_only and (args.upstream is None or args.allow_writes)
    return workload.WorkloadSpec(
        users=args.users,
        duration=args.duration,
        seed=args.seed,
        api_version=args.api_version,
        dashboard_shared=workloads(args)[0] == "service",
        submit_rate=args.submit_rate,
        cancel_rate=args.cancel_rate,
        writes=writes,
    )


def _lag_cause(g: dict[str, Any], m: dict[str, Any]) -> str:
    """Why arrivals went out late: other processes, a busy generator, or bursts."""
    other, cpus = m.get("other_cores"), m.get("cpus") or 0
    if other is not None and other >= OTHER_LOAD_NOTE:
        return (
            f"other processes kept {other} of {cpus:g} cores busy, so the generator waited "
            "for a CPU"
        )
    if g["cpu_util"] >= 0.5:
        return f"the generator itself was busy ({g['cpu_util']:.0%} of a core)"
    return (
        f"the generator averaged {g['cpu_util']:.0%} of a core but its event loop was busy in "
        "bursts (many arrivals and large bodies at once)"
    )


def _notes(
    runs: list[dict[str, Any]], session: runner.Session, args: argparse.Namespace
) -> list[str]:
    notes = list(session.notes)
    for r in runs:
        g = r["generator"]
        other = (r.get("machine") or {}).get("other_cores")
        where = f"{r['target']} at {r['users']} users"
        if other is not None and other >= OTHER_LOAD_NOTE:
            notes.append(
                f"{where}: other processes kept {other:.2f} cores busy during the run (load "
                f"average {r['machine'].get('loadavg')}): latencies include that contention."
            )
        if g["saturated"]:
            cause = _lag_cause(g, r.get("machine") or {})
            notes.append(
                f"{where}: arrivals went out late ({g['why']}); {cause}. Latencies are measured "
                "from the scheduled time, so they include that delay."
            )
        if r.get("ryw", {}).get("checks", 0) == 0 and _spec(args).writes:
            notes.append(f"{r['target']} at {r['users']} users: no read-your-writes check ran.")
    if args.upstream is not None:
        notes.append(
            "Real upstream: the direct run's upstream count is its own request count; the proxy "
            "run's is the proxy's count of requests it sent upstream (/_cacheproxy/stats)."
        )
        if not _spec(args).writes:
            notes.append("Read-only run (no --allow-writes): read-your-writes was not checked.")
        if session.ids.distinct_users == 1:
            notes.append(
                "Every client used the same identity, so per-user cache entries are shared more "
                "than with real users; expect a lower hit ratio with distinct users."
            )
    if "service" in workloads(args):
        notes.append(
            "Workload service: dashboards poll with one portal service account, as portals do; "
            "user actions use each user's own token."
        )
    if "user" in workloads(args):
        notes.append(
            "Workload user: every client polls with its own credentials (scripts, CLI wrappers, "
            "per-user portals, gateways passing the user's JWT through)."
        )
    words = private_data(args)
    if args.upstream is None:
        notes.append(
            f"PrivateData={words}: the simulator and the proxy."
            if words is not None
            else f"PrivateData unset: the simulator has Slurm's default "
            f"({SLURM_DEFAULT_PRIVATE_DATA}); the proxy is not told (every route per user)."
        )
    else:
        notes.append(
            f"The proxy was told PrivateData={words}."
            if words is not None
            else "The proxy was not told the site's PrivateData (every route per user)."
        )
    if args.sweep and len(workloads(args)) > 1:
        notes.append(f"The sweep and capacity figures are those of workload {workloads(args)[0]}.")
    return notes


def _jwt_setup(outdir: Path, users: int, proxy_args: list[str]) -> dict[str, str]:
    """``--jwt-verify``: a key file the proxy verifies with, and a JWT per user."""
    key = secrets.token_bytes(32)
    outdir.mkdir(parents=True, exist_ok=True)
    key_file = outdir / "jwt_hs256.key"
    key_file.write_bytes(key)
    proxy_args += ["--jwt-key", str(key_file)]
    return identities.jwt_tokens(identities.sim_names(users), key)


async def _bench(
    args: argparse.Namespace, progress: Progress, outdir: Path, argv: list[str]
) -> dict[str, Any]:
    spec = _spec(args)
    user_counts = capacity.parse_sweep(args.sweep) if args.sweep else [args.users]
    targets = runner.ordered_targets(["direct", "proxy", *args.compare])
    kinds = workloads(args)
    sim_args, proxy_args = _process_args(args)
    sim_tokens = None
    if args.jwt_verify and args.upstream is None:
        sim_tokens = _jwt_setup(outdir, max(user_counts), proxy_args)
    opts = runner.SessionOptions(
        outdir=outdir,
        spec=spec,
        targets=targets,
        upstream=args.upstream,
        identities=_identities(args),
        max_users=max(user_counts),
        sim_tokens=sim_tokens,
        sim_jobs=args.sim_jobs,
        sim_nodes=args.sim_nodes,
        sim_args=sim_args,
        proxy_args=proxy_args,
        drain=args.drain,
        timeout=args.timeout,
        connections=args.connections,
        accept_encoding=args.accept_encoding,
        on_tick=progress.tick,
        log=progress.log,
    )
    runs: list[dict[str, Any]] = []
    latencies: dict[tuple[int, str], list[float]] = {}
    async with runner.Session(opts) as session:
        for users in user_counts:
            for kind in kinds:
                session.spec = replace(session.spec, dashboard_shared=kind == "service")
                for target in targets:
                    progress.log(
                        f"run: {kind} workload, {target}, {users} users, {spec.duration:g} s"
                    )
                    out = await session.run(target, users)
                    progress.end_line()
                    runs.append(out.summary)
                    latencies[(users, _label(out.summary, len(kinds)))] = out.latencies_ms
                    s = out.summary
                    busy = (s.get("controller") or {}).get("busy_s")
                    progress.log(
                        f"  {s['client_requests']} requests, p50 {s['latency_ms']['p50']:.1f} ms, "
                        f"p99 {s['latency_ms']['p99']:.1f} ms, upstream {s['upstream_requests']}"
                        + ("" if busy is None else f", controller busy {busy:g} s")
                        + f", errors {s['errors']}, RYW violations {s['ryw_violations']}"
                    )
        notes = _notes(runs, session, args)
        crashed = list(session.crashed)
        spec = session.spec
        sim_argv = session.sim.argv if session.sim else []
        proxy_argv = session.proxy.argv if session.proxy else []
    sweep = None
    cap = None
    if args.sweep:
        sweep = [
            {
                "users": u,
                "runs": {
                    r["target"]: _sweep_view(r)
                    for r in runs
                    if r["users"] == u and r["workload"] == kinds[0]
                },
            }
            for u in user_counts
        ]
        cap = capacity.capacity_report(sweep, args.upstream_budget, targets)
    config = {
        "command": "cacheproxy bench " + shlex.join(argv),
        "mode": "upstream" if args.upstream else "simulator",
        "targets": targets,
        "workload": spec.to_json(),
        "workloads": kinds,
        "private_data": private_data(args),
        "jwt_verify": bool(args.jwt_verify and args.upstream is None),
        "user_counts": user_counts,
        "simulator": {"argv": _portable(sim_argv), "jobs": args.sim_jobs, "nodes": args.sim_nodes}
        if not args.upstream
        else None,
        "proxy": {"argv": _portable(proxy_argv)},
        "upstream": args.upstream,
        "drain_s": args.drain,
        "timeout_s": args.timeout,
        "connections": args.connections,
        "accept_encoding": args.accept_encoding,
        "generator": "aiohttp, one process, open loop",
    }
    rep = report.build(config=config, runs=runs, sweep=sweep, capacity=cap, notes=notes)
    rep["crashed"] = crashed
    plot_files = [] if args.no_plots else _plots(outdir, rep, latencies, user_counts, args)
    if not args.no_plots and not plot_files:
        rep["notes"].append(
            "matplotlib is not installed: no plots (pip install 'cacheproxy[bench]')."
        )
    report.write(outdir, rep, plot_files)
    return rep


def _label(run: dict[str, Any], kinds: int) -> str:
    """A run's name in plots: the target, and its workload when there are several."""
    return run["target"] if kinds == 1 else f"{run['target']} ({run['workload']})"


def _portable(argv: list[str]) -> list[str]:
    return ["python" if a == sys.executable else a for a in argv]


def _sweep_view(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "client_requests",
        "upstream_requests",
        "throughput_rps",
        "upstream_rps",
        "latency_ms",
        "hit_ratio",
        "ryw_violations",
        "errors",
    )
    view = {k: r[k] for k in keys}
    # A point where requests failed or went out late understates the demand.
    view["saturated"] = bool(r["errors"]) or bool(r["generator"]["saturated"])
    return view


def _plots(
    outdir: Path,
    rep: dict[str, Any],
    latencies: dict[tuple[int, str], list[float]],
    user_counts: list[int],
    args: argparse.Namespace,
) -> list[str]:
    if not plots.available():
        return []
    files = []
    for users in user_counts:
        suffix = f"-{users}u" if len(user_counts) > 1 else ""
        name = f"latency-cdf{suffix}.png"
        plots.latency_cdf(
            {t: v for (u, t), v in latencies.items() if u == users},
            outdir / name,
            f"client latency, {users} users",
        )
        files.append(name)
        name = f"upstream-rps{suffix}.png"
        kinds = len(rep["config"]["workloads"])
        plots.upstream_over_time(
            {
                _label(r, kinds): r["upstream_rps_series"]
                for r in rep["runs"]
                if r["users"] == users
            },
            outdir / name,
            f"upstream requests/s, {users} users",
        )
        files.append(name)
    if rep.get("sweep"):
        plots.sweep(rep["sweep"], outdir / "sweep.png", args.upstream_budget)
        files.append("sweep.png")
    return files


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    args = _parser().parse_args(argv)
    try:
        workloads(args)
    except ValueError as exc:
        print(f"cacheproxy bench: {exc}", file=sys.stderr)
        return 2
    if args.users <= 0 or args.duration <= 0:
        print("cacheproxy bench: --users and --duration must be positive", file=sys.stderr)
        return 2
    if args.upstream is None and (args.user or args.token or args.token_file or args.users_file):
        print("cacheproxy bench: --user/--token/--users-file need --upstream", file=sys.stderr)
        return 2
    info = sys.stderr if args.json else sys.stdout
    progress = Progress(sys.stderr if args.json else sys.stdout, args.quiet)
    outdir = args.output / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while outdir.exists():
        n += 1
        outdir = args.output / (time.strftime("%Y%m%d-%H%M%S") + f"-{n}")
    try:
        rep = _run_loop(_bench(args, progress, outdir, argv))
    except (procs.StartError, runner.SetupError, ValueError, OSError) as exc:
        progress.end_line()
        print(f"cacheproxy bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncacheproxy bench: interrupted", file=sys.stderr)
        return 130
    print("", file=info)
    print(report.text_table(rep["runs"]), file=info)
    cap = rep.get("capacity")
    if cap:
        for target, c in cap["max_users"].items():
            extra = " (extrapolated)" if c["extrapolated"] else ""
            print(
                f"{target}: at most {c['users']} users within "
                f"{cap['upstream_budget_rps']:g} upstream req/s{extra}",
                file=info,
            )
    failed = [c for c in rep.get("targets_met", []) if not c["pass"]]
    for c in failed:
        print(
            f"target missed: {c['target']} at {c['users']} users: {c['check']} ({c['value']})",
            file=info,
        )
    for note in rep["notes"]:
        print(f"note: {note}", file=info)
    print(f"\nreport: {outdir}/report.md, {outdir}/report.json", file=info)
    problems = report.validate(rep)
    if problems:
        print(
            "cacheproxy bench: report.json does not match its schema:\n  " + "\n  ".join(problems),
            file=sys.stderr,
        )
        return 1
    if args.json:
        sys.stdout.write(json.dumps(rep, indent=2) + "\n")
    if rep["crashed"]:
        print(
            "cacheproxy bench: a process under test crashed: " + "; ".join(rep["crashed"]),
            file=sys.stderr,
        )
        return EXIT_CRASHED
    return 0


def _run_loop(coro: Any) -> dict[str, Any]:
    """asyncio.run on uvloop when available: the generator's loop is its main CPU cost."""
    try:
        import uvloop
    except ImportError:
        result: dict[str, Any] = asyncio.run(coro)
        return result
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        out: dict[str, Any] = r.run(coro)
        return out
