"""Prometheus metrics move as the proxy works, parse, and stay bounded."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.ops.metrics import prepare_multiproc_dir, replay
from cacheproxy.stats import MAX_TAG_SERIES, OTHER_TAG, Histogram, Stats, fold_tag
from tests.clock import Clock
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.ops.conftest import JOBS, PARTITIONS, auth, samples, value

METRICS = "/_cacheproxy/metrics"


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await client.get(METRICS)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(r.text)


async def test_metrics_follow_a_scripted_sequence(
    app: CacheProxyApp,
    client: httpx.AsyncClient,
    upstream: FakeSlurmrestd,
    transport: Any,
    clock: Clock,
) -> None:
    # miss, then hit
    assert (
        (await client.get(PARTITIONS, headers=auth("alice")))
        .headers["cache-status"]
        .endswith("stored")
    )
    assert "hit" in (await client.get(PARTITIONS, headers=auth("alice"))).headers["cache-status"]
    m = await scrape(client)
    assert value(m, "cacheproxy_requests_total", route="partitions", cache="fwd=miss") == 1
    assert value(m, "cacheproxy_requests_total", route="partitions", cache="hit") == 1
    assert value(m, "cacheproxy_upstream_requests_total", route="partitions") == 1
    assert value(m, "cacheproxy_upstream_latency_seconds_count", route="partitions") == 1
    assert (
        value(m, "cacheproxy_upstream_latency_seconds_bucket", route="partitions", le="+Inf") == 1
    )
    assert value(m, "cacheproxy_auth_accepted_total") >= 1
    assert value(m, "cacheproxy_cache_entries") == 1
    assert value(m, "cacheproxy_cache_bytes") > 0

    # five identical GETs while the fetch is held: one upstream request, four waiters
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(client.get(JOBS, headers=auth("alice"))) for _ in range(5)]
    await upstream.entered.wait()
    for _ in range(10_000):  # let the other four join the held fetch
        if app.stats.coalesced >= 4:
            break
        await asyncio.sleep(0)
    upstream.gate.set()
    assert {r.status_code for r in await asyncio.gather(*tasks)} == {200}
    upstream.gate = None
    m = await scrape(client)
    assert value(m, "cacheproxy_coalesced_total") == 4
    assert value(m, "cacheproxy_upstream_requests_total", route="jobs") == 1
    assert value(m, "cacheproxy_requests_total", route="jobs", cache="fwd=miss") == 5

    # a write invalidates; per-job tags are folded
    before = value(m, "cacheproxy_invalidations_total", tag="jobs")
    r = await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
    job_id = r.json()["job_id"]
    await client.delete(f"/slurm/v0.0.43/job/{job_id}", headers=auth("alice"))
    m = await scrape(client)
    assert value(m, "cacheproxy_invalidations_total", tag="jobs") > before
    assert value(m, "cacheproxy_invalidations_total", tag="job:*") >= 1
    assert value(m, "cacheproxy_invalidations_total", tag=f"job:{job_id}") == 0
    assert not [k for k in m if k[0] == "cacheproxy_invalidations_total" and str(job_id) in str(k)]
    assert value(m, "cacheproxy_requests_total", route="job-submit", cache="fwd=method") == 1
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.headers["cache-status"].startswith("cacheproxy; fwd=miss")

    # upstream down after expiry: the entry is served stale (stale_if_error)
    clock.advance(10)
    transport.down = True
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.status_code == 200
    assert "fwd=stale" in r.headers["cache-status"]
    m = await scrape(client)
    assert value(m, "cacheproxy_stale_served_total", route="jobs") == 1
    assert value(m, "cacheproxy_stale_age_seconds_count") == 1
    assert value(m, "cacheproxy_stale_age_max_seconds") == 10
    assert value(m, "cacheproxy_requests_total", route="jobs", cache="stale") == 1

    # the JSON stats tell the same story
    s = (await client.get("/_cacheproxy/stats")).json()
    assert s["coalesced"] == 4
    assert s["stale_served"] == 1
    assert s["by_route"]["partitions"] == {"fwd=miss": 1, "hit": 1}
    assert s["entries"] >= 1
    assert all(
        ":" not in t or t.endswith(":*") for i in s["recent_invalidations"] for t in i["tags"]
    )


async def test_exposition_parses_with_help_and_types(client: httpx.AsyncClient) -> None:
    await client.get(PARTITIONS, headers=auth("alice"))
    await client.get(PARTITIONS, headers=auth("alice"))
    text = (await client.get(METRICS)).text
    fams = list(text_string_to_metric_families(text))
    names = [f.name for f in fams]
    assert len(names) == len(set(names))
    ours = {f.name: f for f in fams if f.name.startswith("cacheproxy_")}
    for name in (
        "cacheproxy_requests",
        "cacheproxy_upstream_requests",
        "cacheproxy_upstream_latency_seconds",
        "cacheproxy_coalesced",
        "cacheproxy_fast_lane_hits",
        "cacheproxy_fast_lane_forwards",
        "cacheproxy_invalidations",
        "cacheproxy_cache_entries",
        "cacheproxy_cache_bytes",
        "cacheproxy_cache_evictions",
        "cacheproxy_auth_accepted",
        "cacheproxy_auth_failures",
        "cacheproxy_stale_served",
        "cacheproxy_stale_age_seconds",
        "cacheproxy_store_errors",
        "cacheproxy_build_info",
    ):
        assert name in ours, name
        assert ours[name].documentation, name
    assert ours["cacheproxy_upstream_latency_seconds"].type == "histogram"
    assert ours["cacheproxy_requests"].type == "counter"
    assert ours["cacheproxy_cache_entries"].type == "gauge"
    assert "process_resident_memory_bytes" in names or sys.platform != "linux"


async def test_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    r = await client.get(METRICS, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


async def test_auth_failures_are_counted(client: httpx.AsyncClient) -> None:
    r = await client.get(JOBS, headers=auth("alice", "wrong-token"))
    assert r.status_code == 500  # what slurmrestd answers a bad token
    m = samples((await client.get(METRICS)).text)
    assert value(m, "cacheproxy_auth_failures_total", reason="refused") == 1


async def test_many_jobs_do_not_grow_series(client: httpx.AsyncClient) -> None:
    for job in range(1000, 1060):
        await client.delete(f"/slurm/v0.0.43/job/{job}", headers=auth("alice"))
    m = samples((await client.get(METRICS)).text)
    tags = {dict(k[1])["tag"] for k in m if k[0] == "cacheproxy_invalidations_total"}
    assert "job:*" in tags
    assert "db.job:*" in tags
    assert len(tags) < 20


def test_fold_and_cap() -> None:
    assert fold_tag("job:123") == "job:*"
    assert fold_tag("db.job:77") == "db.job:*"
    assert fold_tag("@user:abc") == "@user:*"
    assert fold_tag("jobs") == "jobs"
    stats = Stats()
    for i in range(MAX_TAG_SERIES * 3):
        stats.invalidated([f"weird{i}"])
    assert len(stats.invalidations) == MAX_TAG_SERIES + 1
    assert stats.invalidations[OTHER_TAG] == MAX_TAG_SERIES * 2
    assert len(stats.recent_invalidations) == stats.recent_invalidations.maxlen
    # consecutive identical bumps (a write bumps before and after) share a row
    merged = Stats()
    for _ in range(3):
        merged.invalidated(["jobs", "nodes"])
    merged.invalidated(["jobs", "nodes"], source="admin")
    merged.invalidated(["jobs", "nodes"])
    assert [(i.tags, i.source, i.count) for i in merged.recent_invalidations] == [
        (("jobs", "nodes"), "write", 3),
        (("jobs", "nodes"), "admin", 1),
        (("jobs", "nodes"), "write", 1),
    ]
    assert merged.invalidations == {"jobs": 5, "nodes": 5}
    # raw counting (``invalidations[tag] += 1``) is folded on export too
    raw = Stats()
    for i in range(50):
        raw.invalidations[f"job:{i}"] += 1
    assert raw.invalidations_folded() == {"job:*": 50}


def test_histogram() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 5.0, 50.0):
        h.observe(v)
    assert h.count == 5
    assert h.counts == [2, 1, 1, 1]
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (10.0, 4), (float("inf"), 5)]
    assert h.sum == 55.65
    p50 = h.quantile(0.5)
    assert p50 is not None
    assert 0.1 < p50 <= 1.0
    assert Histogram((1.0,)).quantile(0.5) is None


def _has_file(directory: Path, pattern: str, pid: int) -> bool:
    return any(p.name.endswith(f"_{pid}.db") for p in directory.glob(pattern))


def _worker(directory: Path, hits: int, latency: float, role: str) -> subprocess.Popen[str]:
    """A worker process of tests/ops/multiproc_worker.py, writing into ``directory``."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ops.multiproc_worker", str(hits), str(latency), role],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_multiprocess_mode_merges_workers(tmp_path: Path) -> None:
    prepare_multiproc_dir(str(tmp_path))
    with _worker(tmp_path, 5, 0.02, "exit") as dead:  # a worker that has exited
        dead.communicate(timeout=60)
    assert dead.returncode == 0
    assert _has_file(tmp_path, "gauge_live*", dead.pid)
    with _worker(tmp_path, 4, 2.0, "stay") as other:  # a sibling worker, alive
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "synced"
        with _worker(tmp_path, 3, 0.02, "scrape") as here:
            out, _ = here.communicate(timeout=60)
        other.communicate(timeout=60)  # closes its stdin: it exits
    assert here.returncode == 0
    first, last = (json.loads(line) for line in out.splitlines())

    m = samples(first)
    assert value(m, "cacheproxy_requests_total", route="jobs", cache="hit") == 12
    assert value(m, "cacheproxy_upstream_requests_total", route="jobs") == 3
    assert value(m, "cacheproxy_invalidations_total", tag="job:*") == 3
    assert value(m, "cacheproxy_upstream_latency_seconds_count", route="jobs") == 3
    assert value(m, "cacheproxy_upstream_latency_seconds_bucket", route="jobs", le="0.025") == 2
    assert value(m, "cacheproxy_upstream_latency_seconds_bucket", route="jobs", le="+Inf") == 3
    assert abs(value(m, "cacheproxy_upstream_latency_seconds_sum", route="jobs") - 2.04) < 1e-9
    assert value(m, "cacheproxy_build_info", version="0.1.0") == 1
    # the exited worker's counters still count; its live gauges are gone
    assert not _has_file(tmp_path, "gauge_live*", dead.pid)
    assert _has_file(tmp_path, "counter_*", dead.pid)

    # a worker's later writes add only what is new, never its totals again
    assert value(samples(last), "cacheproxy_requests_total", route="jobs", cache="hit") == 22


def _buckets(bounds: tuple[float, ...], values: list[float]) -> list[int]:
    h = Histogram(bounds[:-1])
    for v in values:
        h.observe(v)
    return h.counts


def test_replay_keeps_bucket_counts_and_sum() -> None:
    bounds = (0.1, 1.0, 10.0, math.inf)
    for observed in ([0.05], [0.1], [0.5, 0.7, 5.0], [50.0, 0.01], [0.0, 99.0, 99.0], []):
        counts = _buckets(bounds, observed)
        replayed = [v for v, n in replay(bounds, counts, sum(observed)) for _ in range(n)]
        assert _buckets(bounds, replayed) == counts, observed
        assert abs(sum(replayed) - sum(observed)) < 1e-9, observed
