"""The numbers of one run, from its samples: what report.json's ``runs`` hold."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cacheproxy.bench import cachestatus
from cacheproxy.bench.loadgen import RunResult, Sample

MAX_ERROR_EXAMPLES = 10
SATURATED_CPU = 0.85
"""Generator CPU (fraction of one core) above which it may be the bottleneck."""
SATURATED_LAG_P99 = 0.050
"""Schedule lag p99 (seconds) above which arrivals went out late."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of sorted values; NaN if empty."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def _ms(v: float) -> float:
    return round(v * 1000.0, 3) if not math.isnan(v) else 0.0


def latency_ms(samples: Sequence[Sample]) -> dict[str, float]:
    lat = sorted(s.latency for s in samples if s.status != 0)
    return {
        "p50": _ms(percentile(lat, 50)),
        "p95": _ms(percentile(lat, 95)),
        "p99": _ms(percentile(lat, 99)),
        "max": _ms(lat[-1]) if lat else 0.0,
        "mean": _ms(sum(lat) / len(lat)) if lat else 0.0,
    }


def scenario_of(op: str) -> str:
    return op.split(":", 1)[0]


def per_second(series: Sequence[tuple[float, int | None]]) -> list[list[float]]:
    """(time, rate) between consecutive readings of a running total."""
    out: list[list[float]] = []
    prev: tuple[float, int] | None = None
    for t, total in series:
        if total is None:
            continue
        if prev is not None and t > prev[0]:
            out.append([round(t, 3), round((total - prev[1]) / (t - prev[0]), 3)])
        prev = (t, total)
    return out


def generator_health(run: RunResult) -> dict[str, Any]:
    lags = sorted(run.lags)
    cpu = run.cpu_seconds / run.wall if run.wall > 0 else 0.0
    lag_p99 = percentile(lags, 99) if lags else 0.0
    reasons = []
    if cpu > SATURATED_CPU:
        reasons.append(f"generator CPU {cpu:.0%} of a core")
    if lag_p99 > SATURATED_LAG_P99:
        reasons.append(f"schedule lag p99 {lag_p99 * 1000:.0f} ms")
    return {
        "cpu_seconds": round(run.cpu_seconds, 3),
        "cpu_util": round(cpu, 3),
        "lag_ms": {
            "p50": _ms(percentile(lags, 50)) if lags else 0.0,
            "p99": _ms(lag_p99),
            "max": _ms(lags[-1]) if lags else 0.0,
        },
        "saturated": bool(reasons),
        "why": "; ".join(reasons),
    }


def summarize(
    run: RunResult,
    *,
    upstream_requests: int,
    upstream_source: str,
    upstream_series: list[tuple[float, int | None]] | None = None,
    coalesced: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    samples = run.samples
    wall = run.wall if run.wall > 0 else run.duration
    gets = [s for s in samples if s.method == "GET"]
    cache = Counter(s.cache or "none" for s in gets)
    hits = cache.get(cachestatus.HIT, 0)
    failed = [s for s in samples if s.failed]
    error_kinds: Counter[str] = Counter(s.error or f"http {s.status}" for s in failed)
    if run.unfinished:
        error_kinds["unfinished"] += run.unfinished
    by_scenario: dict[str, Any] = {}
    for name in sorted({scenario_of(s.op) for s in samples}):
        mine = [s for s in samples if scenario_of(s.op) == name]
        by_scenario[name] = {"requests": len(mine), "latency_ms": latency_ms(mine)}
    ok = len(samples) - len(failed)
    out: dict[str, Any] = {
        "target": run.target,
        "url": run.url,
        "client_requests": len(samples) + run.unfinished,
        "upstream_requests": int(upstream_requests),
        "upstream_source": upstream_source,
        "throughput_rps": round(ok / wall, 3),
        "upstream_rps": round(upstream_requests / wall, 3),
        "latency_ms": latency_ms(samples),
        "hit_ratio": round(hits / len(gets), 4) if gets else 0.0,
        "cache": dict(sorted(cache.items())),
        "coalesced": int(
            coalesced if coalesced is not None else cache.get(cachestatus.COLLAPSED, 0)
        ),
        "ryw_violations": run.ryw.violations,
        "ryw": run.ryw.to_json(),
        "errors": len(failed) + run.unfinished,
        "statuses": {str(k): v for k, v in sorted(Counter(s.status for s in samples).items())},
        "error_kinds": dict(sorted(error_kinds.items())),
        "error_examples": [
            {
                "t": round(s.start, 3),
                "request": f"{s.method} {s.path}",
                "op": s.op,
                "status": s.status,
                "error": s.error,
                "cache": s.cache,
            }
            for s in failed[:MAX_ERROR_EXAMPLES]
        ],
        "bytes_received": sum(s.nbytes for s in samples),
        "duration_s": round(run.duration, 3),
        "wall_s": round(wall, 3),
        "by_scenario": by_scenario,
        "generator": generator_health(run),
        "upstream_rps_series": per_second(upstream_series or run.series),
    }
    if extra:
        out.update(extra)
    return out
