"""Calibrate the simulator's cost model against a real slurmrestd 22.05.

Targets (shared/notes/real-slurmrestd-22.05.md, httpx with keep-alive):
p50 about 2 ms at concurrency 1, about 15 ms at 8, 60-90 ms at 32 (p95 about
300 ms), 300-450 requests/s in all.  Those were measured on a one-node test
cluster with a handful of jobs, so the default run uses a tiny cluster too.

Usage (bounded: about 3 x --duration seconds plus start-up)::

    .venv/bin/python benchmarks/simulator_calibration.py [--duration 5]
        [--levels 1,8,32] [--jobs 5] [--nodes 1] [--path /slurm/v0.0.38/jobs]
        [--model-only] [-- extra simulator options]

``--model-only`` drives the cost model in-process, without HTTP: the figures
of the modelled daemon itself, unaffected by the client's CPU or by other
load on the machine.  Without it, requests go over HTTP (httpx, keep-alive,
one connection per worker) to a simulator subprocess, as the real daemon was
measured; on a busy 2-core machine the client's own overhead shows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cacheproxy.simulator import running_simulator_process
from cacheproxy.simulator.config import CostParams
from cacheproxy.simulator.cost import RealisticCost
from cacheproxy.simulator.stats import Stats

HEADERS = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "sim-token-root"}
MIX = [
    "/slurm/v0.0.38/jobs",
    "/slurm/v0.0.38/nodes",
    "/slurm/v0.0.38/partitions",
    "/slurm/v0.0.38/ping",
]


async def worker(
    client: httpx.AsyncClient, paths: list[str], stop: float, out: list[float], errors: list[int]
) -> None:
    i = 0
    while time.perf_counter() < stop:
        path = paths[i % len(paths)]
        i += 1
        t0 = time.perf_counter()
        r = await client.get(path)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            errors.append(r.status_code)


async def model_level(concurrency: int, duration: float) -> dict[str, float]:
    """Drive the cost model alone (no HTTP, no rendering): the daemon as modelled."""
    cost = RealisticCost(CostParams(), Stats(), seed=1)
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def one() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await cost.locked(False, lambda: 1, lambda n: n)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return _summary(concurrency, latencies, [], time.perf_counter() - start)


def _summary(
    concurrency: int, latencies: list[float], errors: list[int], elapsed: float
) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "max_ms": max(latencies) * 1000,
    }


async def level(url: str, concurrency: int, duration: float, paths: list[str]) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    # One client (one keep-alive connection) per worker, built before the clock
    # starts: building an httpx client costs CPU (TLS context) that would
    # otherwise stall the loop in the middle of the measurement.
    clients = [
        httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30, verify=False)
        for _ in range(concurrency)
    ]
    try:
        warm_stop = time.perf_counter() + min(1.0, duration / 4)
        await asyncio.gather(*(worker(c, paths, warm_stop, [], []) for c in clients))
        start = time.perf_counter()
        stop = start + duration
        await asyncio.gather(*(worker(c, paths, stop, latencies, errors) for c in clients))
        return _summary(concurrency, latencies, errors, time.perf_counter() - start)
    finally:
        for c in clients:
            await c.aclose()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--path", action="append", help="request path (repeatable; default a mix)")
    p.add_argument(
        "--model-only",
        action="store_true",
        help="drive the cost model in-process (no HTTP): immune to client and CPU noise",
    )
    p.add_argument("extra", nargs="*", help="extra simulator options (after --)")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    header = (
        f"{'conc':>5} {'reqs':>7} {'err':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    )
    if args.model_only:
        print("cost model only (default CostParams), uvloop")
        print(header)
        for c in levels:
            _print(uvloop.run(model_level(c, args.duration)))
        return 0
    paths = args.path or MIX
    sim_args = ["--jobs", str(args.jobs), "--nodes", str(args.nodes), *args.extra]
    with running_simulator_process(*sim_args) as url:
        print(f"simulator {url} {' '.join(sim_args)}; paths: {', '.join(paths)}")
        print(header)
        for c in levels:
            _print(uvloop.run(level(url, c, args.duration, paths)))
    return 0


def _print(r: dict[str, float]) -> None:
    print(
        f"{r['concurrency']:>5.0f} {r['requests']:>7.0f} {r['errors']:>4.0f} {r['rps']:>8.0f} "
        f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
