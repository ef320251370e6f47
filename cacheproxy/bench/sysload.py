"""How busy the whole machine was during a run, and how much of that was us.

The bench shares a small machine with whatever else runs there.  Schedule
lag with an idle generator means the generator did not get a CPU in time;
the report then says how many cores other processes took, so nobody reads
machine contention as proxy or controller latency.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    at: float
    """time.monotonic() when taken."""
    busy: float
    """CPU seconds spent running anything, all cores together."""
    steal: float
    """CPU seconds the hypervisor gave to other guests."""


def snapshot() -> CpuSnapshot | None:
    """Machine-wide CPU counters from /proc/stat (Linux), else None."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    v = [int(x) / _CLK_TCK for x in first[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0.0
    return CpuSnapshot(time.monotonic(), user + nice + system + irq + softirq, steal)


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def usage(
    before: CpuSnapshot | None, after: CpuSnapshot | None, bench_cpu_seconds: float
) -> dict[str, float | None]:
    """Cores busy on average between two snapshots: all, ours, everyone else's."""
    if before is None or after is None or after.at <= before.at:
        return {
            "busy_cores": None,
            "bench_cores": None,
            "other_cores": None,
            "steal_cores": None,
            "loadavg": loadavg(),
            "cpus": float(os.cpu_count() or 0),
        }
    wall = after.at - before.at
    busy = (after.busy - before.busy) / wall
    ours = bench_cpu_seconds / wall
    return {
        "busy_cores": round(busy, 3),
        "bench_cores": round(ours, 3),
        "other_cores": round(max(0.0, busy - ours), 3),
        "steal_cores": round((after.steal - before.steal) / wall, 3),
        "loadavg": loadavg(),
        "cpus": float(os.cpu_count() or 0),
    }
