"""The fair upstream queue under a saturated controller, in virtual time.

Drives the real :class:`cacheproxy.upstream.protect.Limiter` with a
per-user dashboard workload whose demand exceeds what 16 slots can serve,
and reports each cost class's wait for a slot and the overall latency
(wait + service), first come first served (every request the same cost and
user: the limiter then keeps arrival order) against fair (the rules' cost
classes and each user's own line).  Service times are virtual, so the
figures do not depend on the machine's load; they say what the queue's
order does, not what the proxy's CPU does.

    .venv/bin/python benchmarks/fair_queue.py [--users 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import statistics
from dataclasses import dataclass

from cacheproxy.core.rules import COST_CLASSES
from cacheproxy.upstream.protect import Limiter

SERVICE = {"cheap": 0.003, "list": 0.025, "slurmdb": 0.300}
"""Seconds a request holds a slurmrestd slot, by class (the simulator's
realistic model: a job or a ping a few ms, a list tens, a slurmdbd read
hundreds)."""
DASHBOARD = ("list", "list", "list", "list", "slurmdb", "slurmdb")
"""One dashboard poll: jobs, nodes, partitions, reservations, associations, qos."""


@dataclass
class Request:
    cls: str
    user: str
    arrived: float
    started: float = -1.0


async def run(users: int, seconds: float, fair: bool, seed: int, poll: float) -> list[Request]:
    rnd = random.Random(seed)
    limiter = Limiter(16, max_queue=10**9, timeout=10**9)
    events: list[tuple[float, int, str, Request | None, int]] = []
    seq = 0
    done: list[Request] = []
    now = 0.0

    def push(at: float, kind: str, req: Request | None, cost: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, req, cost))

    for u in range(users):
        t = rnd.uniform(0, poll)
        while t < seconds:
            for cls in DASHBOARD:
                push(t, "arrive", Request(cls, f"name:u{u}", t))
            if rnd.random() < 0.3:  # a script checking one job, a ping
                at = t + rnd.uniform(0, poll)
                push(at, "arrive", Request("cheap", f"name:u{u}", at))
            t += poll * rnd.uniform(0.8, 1.2)

    async def ask(req: Request, cost: int) -> None:
        await limiter.acquire(req.user if fair else "", cost)
        req.started = now
        push(now + SERVICE[req.cls], "done", req, cost)

    tasks = []
    while events:
        now, _, kind, req, cost = heapq.heappop(events)
        assert req is not None
        if kind == "arrive":
            cost = COST_CLASSES[req.cls] if fair else 1
            tasks.append(asyncio.create_task(ask(req, cost)))
        else:
            done.append(req)
            limiter.release(cost)
        for _ in range(3):  # let the task that got a slot record its start
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return done


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between a user's polls")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    demand = args.users / args.poll * sum(SERVICE[c] for c in DASHBOARD) / 16
    print(f"{args.users} users, a dashboard poll each {args.poll:g} s, {args.seconds:g} s;")
    print(f"slot demand {demand:.0%} of 16 slots (plus 30% of users' cheap requests)\n")
    print("| queue | class | requests | wait p50 ms | wait p99 ms | latency p50 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for fair in (False, True):
        done = asyncio.run(run(args.users, args.seconds, fair, args.seed, args.poll))
        name = "fair" if fair else "first come"
        for cls in ("cheap", "list", "slurmdb"):
            rs = [r for r in done if r.cls == cls]
            waits = [r.started - r.arrived for r in rs]
            lat = [w + SERVICE[cls] for w in waits]
            print(
                f"| {name} | {cls} | {len(rs)} | {pct(waits, 0.5):.0f} | "
                f"{pct(waits, 0.99):.0f} | {pct(lat, 0.5):.0f} |"
            )
        lat = [r.started - r.arrived + SERVICE[r.cls] for r in done]
        print(f"| {name} | all | {len(done)} | | | {statistics.median(lat) * 1000:.0f} |")


if __name__ == "__main__":
    main()
