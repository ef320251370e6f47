"""``cacheproxy simulate`` / ``python -m cacheproxy.simulator`` (see docs/CONTRACTS.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

from cacheproxy.simulator import privatedata
from cacheproxy.simulator.config import CostParams, SimConfig, default_users, load_users_file
from cacheproxy.simulator.releases import DEFAULT_MAX_CONNECTIONS, RELEASES, STYLES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cacheproxy simulate",
        description="Run a simulated slurmrestd (Slurm 22.05 to 26.05, API v0.0.36 to v0.0.45).",
    )
    p.add_argument("--port", type=int, required=True, help="TCP port (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--jobs", type=int, default=2000, help="jobs in the queue (default 2000)")
    p.add_argument("--nodes", type=int, default=500, help="compute nodes (default 500)")
    p.add_argument(
        "--users-file", help='JSON object {"user": "token"} (default root, user001..100)'
    )
    p.add_argument(
        "--private-data",
        nargs="?",
        const="jobs",
        default="none",
        metavar="WORDS",
        help="slurm.conf/slurmdbd.conf PrivateData, comma-separated: "
        + ", ".join(privatedata.WORDS)
        + "; all; none (default). The bare flag means jobs",
    )
    p.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="USER",
        help="give USER AdminLevel=Operator (sees everything); repeatable",
    )
    p.add_argument(
        "--coordinator",
        action="append",
        default=[],
        metavar="USER=ACCT[,ACCT]",
        help="make USER coordinator of the accounts; repeatable",
    )
    p.add_argument(
        "--style",
        choices=list(STYLES),
        default="all",
        help="daemon release, serving exactly its API versions ("
        + ", ".join(f"{r.name}: {r.versions[0]}-{r.versions[-1]}" for r in RELEASES.values())
        + "); all (default): every version; 25.x: v0.0.43 and v0.0.44",
    )
    p.add_argument("--cost-model", choices=["realistic", "none"], default="realistic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--job-speed",
        type=float,
        default=1.0,
        help="how fast jobs move pending->running->completed (1 = real time, 0 = frozen)",
    )
    p.add_argument(
        "--read-parallelism",
        type=int,
        default=CostParams.read_parallelism,
        help="readers that may hold the simulated controller lock together",
    )
    p.add_argument(
        "--cost-scale",
        type=float,
        default=1.0,
        help="multiply every simulated service time (realistic model only)",
    )
    p.add_argument(
        "--rate-limit",
        action="store_true",
        help="SlurmctldParameters=rl_enable (23.02 on): a per-user token bucket; a limited "
        "user's requests are delayed by slurmrestd's own retries, never refused",
    )
    p.add_argument("--rl-bucket-size", type=int, default=30, help="rl_bucket_size (default 30)")
    p.add_argument(
        "--rl-refill-rate", type=float, default=2.0, help="tokens per second (default 2)"
    )
    p.add_argument(
        "--rpc-queue-hard-drop",
        type=int,
        default=0,
        metavar="MAX_QUEUED",
        help="SlurmctldParameters=enable_rpc_queue with rpc_queue.yaml hard_drop and "
        "max_queued=MAX_QUEUED (24.05 on): reads beyond it answer 500 'Rate limit exceeded, "
        "please retry later'",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections before slurmrestd stops accepting new ones (default 124; "
        "22.05 has no such option)",
    )
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        default=0,
        help="slurmrestd -t: requests handled at once (default: the release's, 20 through "
        "24.11, two per CPU from 25.05, at most 32 from 25.11)",
    )
    p.add_argument(
        "--uvicorn-status-lines",
        action="store_true",
        help="standard reason phrases instead of slurmrestd's (e.g. '304 NOT MODIFIED')",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    users = load_users_file(args.users_file) if args.users_file else default_users()
    base = CostParams()
    s = max(0.0, args.cost_scale)
    cost = replace(
        base,
        read_base=base.read_base * s,
        ctld_per_item=base.ctld_per_item * s,
        render_per_item=base.render_per_item * s,
        write_base=base.write_base * s,
        auth_reject_delay=base.auth_reject_delay * s,
        dbd_scale=base.dbd_scale * s,
        read_parallelism=max(1, args.read_parallelism),
    )
    if args.max_connections is not None and args.style == "22.05":
        raise ValueError("--max-connections: slurmrestd 22.05 has no such option (124, built in)")
    if args.threads and not 2 <= args.threads <= 1024:
        raise ValueError("-t: slurmrestd wants 2 to 1024 threads")
    return SimConfig(
        host=args.host,
        port=args.port,
        jobs=max(0, args.jobs),
        nodes=max(1, args.nodes),
        users=users,
        private_data=privatedata.parse(args.private_data),
        operators=frozenset(args.operator),
        coordinators=_coordinators(args.coordinator),
        style=args.style,
        cost_model=args.cost_model,
        seed=args.seed,
        job_speed=max(0.0, args.job_speed),
        exact_status_lines=not args.uvicorn_status_lines,
        cost=cost,
        rate_limit=args.rate_limit,
        rl_bucket_size=max(1, args.rl_bucket_size),
        rl_refill_rate=max(0.001, args.rl_refill_rate),
        max_connections=max(1, args.max_connections or DEFAULT_MAX_CONNECTIONS),
        threads=args.threads,
        rpc_queue_hard_drop=max(0, args.rpc_queue_hard_drop),
    )


def _coordinators(specs: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        user, sep, accounts = spec.partition("=")
        if not sep or not user or not accounts:
            raise ValueError(f"--coordinator {spec!r}: expected USER=ACCT[,ACCT]")
        out[user] = out.get(user, ()) + tuple(a for a in accounts.split(",") if a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"cacheproxy simulate: {exc}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    from cacheproxy.simulator.server import serve

    try:
        serve(config, on_ready=ready)
    except OSError as exc:
        print(f"cacheproxy simulate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
