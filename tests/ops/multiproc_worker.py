"""One "worker" of the multiprocess metrics test, run as its own process:
prometheus-client chooses its multiprocess storage when it is first imported,
from ``PROMETHEUS_MULTIPROC_DIR``, so a worker cannot be faked in the test's
own process.

``python -m tests.ops.multiproc_worker HITS LATENCY ROLE``; ROLE is ``exit``
(write and exit), ``stay`` (write, print ``synced``, run until stdin closes)
or ``scrape`` (write, print the merged exposition as one JSON line, count ten
more hits, stop, print it again).
"""

from __future__ import annotations

import asyncio
import json
import sys
from types import SimpleNamespace
from typing import Any, cast

from cacheproxy.ops.metrics import Exporter
from cacheproxy.stats import Stats


def worker_stats(hits: int, latency: float) -> Stats:
    s = Stats()
    s.requests[("jobs", "hit")] = hits
    s.upstream_requests["jobs"] = 1
    s.observe_upstream("jobs", latency)
    s.invalidated(["jobs", "job:1"])
    return s


def report(stats: Stats) -> Any:
    return cast(Any, SimpleNamespace(stats=stats, started=False))


async def run(hits: int, latency: float, role: str) -> None:
    stats = worker_stats(hits, latency)
    exporter = Exporter(report(stats))
    assert exporter.multiproc_dir, "PROMETHEUS_MULTIPROC_DIR is not set"
    await exporter.start()
    if role == "scrape":
        print(json.dumps(exporter.render()[0].decode()), flush=True)
        stats.requests[("jobs", "hit")] += 10
        await exporter.stop()  # the final sync
        print(json.dumps(exporter.render()[0].decode()), flush=True)
        return
    await exporter.stop()
    if role == "stay":
        print("synced", flush=True)
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]))
