"""Prometheus metrics at ``/_cacheproxy/metrics``.

The hot path only bumps plain counters in :class:`cacheproxy.stats.Stats`;
this module turns them into metric families when scraped (a custom
collector), so a request costs no prometheus-client call and no lock.

Several uvicorn workers (``--workers N``) are several processes, each with
its own ``Stats``, and a scrape reaches only one of them.  With
``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory, wiped before the server
starts), prometheus-client's multiprocess mode is used: every worker writes
its current values into its own files in that directory about once a second
(and on shutdown), and a scrape merges every worker's files.  Counters are
written as absolute values, so a counter of a worker that exited still counts
in the totals; gauges are ``live*`` and vanish with their worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from cacheproxy import __version__, introspect
from cacheproxy.stats import Histogram, Stats

if TYPE_CHECKING:
    from cacheproxy.http.app import CacheProxyApp

log = logging.getLogger("cacheproxy.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 1.0
"""How often a worker writes its values for the others' scrapes to merge."""
_FILE_TAG = "cacheproxy-"
"""Our files are ``<type>_cacheproxy-<pid>.db``: distinct from the files
prometheus-client's own metric objects would write for the same pid."""
_GAUGE_MODES = {
    "cacheproxy_stale_age_max_seconds": "livemax",
    "cacheproxy_upstream_circuit_open": "livemax",
    "cacheproxy_store_circuit_open": "livemax",
    "cacheproxy_build_info": "livemax",
}
"""How gauges of several workers merge (default ``livesum``)."""


# -- families ------------------------------------------------------------------
def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.005``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    family.add_metric(
        labels,
        buckets=[(_le(bound), n) for bound, n in hist.cumulative()],
        sum_value=hist.sum,
    )


def stats_families(stats: Stats) -> list[Metric]:
    """Metric families of the proxy's counters."""
    requests = CounterMetricFamily(
        "cacheproxy_requests",
        "Requests answered, by rule name (route; '-' when no rule matched) and "
        "Cache-Status outcome (cache: hit, fwd=miss, fwd=stale, fwd=bypass, fwd=uri-miss, "
        "fwd=request, fwd=method, error).",
        labels=["route", "cache"],
    )
    for (route, outcome), n in stats.requests.items():
        requests.add_metric([route, outcome], n)
    upstream = CounterMetricFamily(
        "cacheproxy_upstream_requests",
        "Requests sent to slurmrestd, by rule name.",
        labels=["route"],
    )
    for route, n in stats.upstream_requests.items():
        upstream.add_metric([route], n)
    latency = HistogramMetricFamily(
        "cacheproxy_upstream_latency_seconds",
        "Seconds until slurmrestd's response head arrived, by rule name.",
        labels=["route"],
    )
    for route, hist in stats.upstream_latency.items():
        _histogram(latency, [route], hist)
    rejected = CounterMetricFamily(
        "cacheproxy_upstream_rejected",
        "Requests not sent to slurmrestd by the proxy's protection "
        "(reason: busy = too many in flight, circuit_open = failing fast).",
        labels=["reason"],
    )
    rejected.add_metric(["busy"], stats.upstream_busy)
    rejected.add_metric(["circuit_open"], stats.breaker_rejected)
    invalidations = CounterMetricFamily(
        "cacheproxy_invalidations",
        "Tag invalidations (writes and admin purges); per-object tags are folded "
        "(job:123 -> job:*).",
        labels=["tag"],
    )
    for tag, n in stats.invalidations_folded().items():
        invalidations.add_metric([tag], n)
    auth_failures = CounterMetricFamily(
        "cacheproxy_auth_failures",
        "Authentication failures (reason: refused = slurmrestd refused the credential, "
        "blocked = 429 after repeated failures, jwt = refused by local JWT checks).",
        labels=["reason"],
    )
    auth_failures.add_metric(["refused"], stats.auth_refused)
    auth_failures.add_metric(["blocked"], stats.auth_blocked)
    auth_failures.add_metric(["jwt"], stats.jwt_rejected)
    stale = CounterMetricFamily(
        "cacheproxy_stale_served",
        "Expired entries served stale (upstream failing), by rule name.",
        labels=["route"],
    )
    for route, n in stats.stale_by_route.items():
        stale.add_metric([route], n)
    unattributed = stats.stale_served - sum(stats.stale_by_route.values())
    if unattributed > 0 or not stats.stale_by_route:
        stale.add_metric(["-"], max(0, unattributed))
    stale_age = HistogramMetricFamily(
        "cacheproxy_stale_age_seconds",
        "Age (seconds since stored) of entries served stale.",
    )
    _histogram(stale_age, [], stats.stale_age)
    return [
        requests,
        upstream,
        latency,
        _counter(
            "cacheproxy_upstream_errors",
            "Failed exchanges with slurmrestd (refused, timed out, broken).",
            stats.upstream_errors,
        ),
        rejected,
        _counter(
            "cacheproxy_coalesced",
            "Requests that waited for an identical fetch already in flight "
            "instead of asking slurmrestd.",
            stats.coalesced,
        ),
        _counter(
            "cacheproxy_fast_lane_hits",
            "Hits answered by the server protocol without an ASGI cycle "
            "(included in cacheproxy_requests_total's hits).",
            stats.fast_hits,
        ),
        _counter(
            "cacheproxy_fast_lane_forwards",
            "GETs passed through to slurmrestd and answered by the server "
            "protocol without an ASGI cycle (included in "
            "cacheproxy_requests_total's fwd outcomes).",
            stats.fast_forwards,
        ),
        invalidations,
        _counter(
            "cacheproxy_auth_accepted",
            "Credentials slurmrestd accepted (then trusted for auth_ttl).",
            stats.auth_accepted,
        ),
        auth_failures,
        stale,
        stale_age,
        GaugeMetricFamily(
            "cacheproxy_stale_age_max_seconds",
            "Largest age of an entry served stale since start.",
            value=stats.max_stale_age,
        ),
        _counter(
            "cacheproxy_store_errors",
            "Cache store (Redis) operations that failed; the proxy went upstream instead.",
            stats.store_errors,
        ),
        _counter(
            "cacheproxy_bad_requests", "Requests refused as malformed (400).", stats.bad_requests
        ),
        _counter(
            "cacheproxy_rate_limited",
            "Requests refused by the per-user rate limit (429).",
            stats.rate_limited,
        ),
        _counter(
            "cacheproxy_internal_errors",
            "Unexpected exceptions caught (a bug: please report).",
            stats.internal_errors,
        ),
    ]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def runtime_families(root: CacheProxyApp) -> list[Metric]:
    """Families read from the store, transport and coalescer at scrape time."""
    info = GaugeMetricFamily(
        "cacheproxy_build_info", "cacheproxy's version (value always 1).", labels=["version"]
    )
    info.add_metric([__version__], 1)
    out: list[Metric] = [info]
    proxy = root.proxy
    if proxy is None:
        return out
    store = introspect.store_info(proxy.store)
    if "entries" in store:
        out += [
            _gauge(
                "cacheproxy_cache_entries", "Entries in the in-process cache.", store["entries"]
            ),
            _gauge("cacheproxy_cache_bytes", "Bytes held by the in-process cache.", store["bytes"]),
            _gauge(
                "cacheproxy_cache_max_bytes",
                "Bound of the in-process cache, bytes.",
                store["max_bytes"],
            ),
            _counter(
                "cacheproxy_cache_evictions",
                "Entries evicted from the in-process cache to stay within its bound.",
                store["evictions"],
            ),
        ]
    if "local_hits" in store:
        out += [
            _counter(
                "cacheproxy_tier_local_hits",
                "Lookups answered with the local copy (the shared tier sent no body).",
                store["local_hits"],
            ),
            _counter(
                "cacheproxy_tier_outage_hits",
                "Local copies served while the shared tier was unavailable.",
                store.get("outage_hits", 0),
            ),
        ]
    if "shared_circuit_open" in store:
        out.append(
            _gauge(
                "cacheproxy_store_circuit_open",
                "1 while the shared tier (Redis) is skipped after failures.",
                store["shared_circuit_open"],
            )
        )
    transport = introspect.transport_info(proxy.transport)
    if transport:
        out += [
            _gauge(
                "cacheproxy_upstream_in_flight",
                "Requests in flight to slurmrestd.",
                transport["in_flight"],
            ),
            _gauge(
                "cacheproxy_upstream_queue_depth",
                "Requests waiting for a slot to slurmrestd.",
                transport["queued"],
            ),
            _gauge(
                "cacheproxy_upstream_circuit_open",
                "1 while calls to slurmrestd fail fast after repeated failures.",
                transport["circuit_open"],
            ),
        ]
    out.append(
        _gauge(
            "cacheproxy_upstream_fetches_in_flight",
            "Distinct (coalesced) fetches from slurmrestd in progress.",
            len(proxy.coalescer),
        )
    )
    return out


def families(root: CacheProxyApp) -> list[Metric]:
    return stats_families(root.stats) + runtime_families(root)


class StatsCollector:
    """A prometheus-client collector over one app's counters (single process)."""

    def __init__(self, root: CacheProxyApp) -> None:
        self._root = root

    def collect(self) -> Iterable[Metric]:
        return families(self._root)


# -- multiprocess mode -------------------------------------------------------------
_OUR_FILE = re.compile(r"_" + re.escape(_FILE_TAG) + r"(\d+)\.db\Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MultiprocWriter:
    """Writes one process's metric families into prometheus-client's
    multiprocess files, as absolute values (not increments)."""

    def __init__(self, directory: str, pid: Callable[[], int] = os.getpid) -> None:
        self.directory = directory
        self._pid = pid
        self._files: dict[str, MmapedDict] = {}
        self._owner = pid()

    def _file(self, prefix: str) -> MmapedDict:
        pid = self._pid()
        if pid != self._owner:  # forked: never write into the parent's files
            self.close()
            self._owner = pid
        f = self._files.get(prefix)
        if f is None:
            path = os.path.join(self.directory, f"{prefix}_{_FILE_TAG}{pid}.db")
            f = self._files[prefix] = MmapedDict(path)  # type: ignore[no-untyped-call]
        return f

    def write(self, metrics: Iterable[Metric]) -> None:
        for metric in metrics:
            if metric.type == "gauge":
                prefix = "gauge_" + _GAUGE_MODES.get(metric.name, "livesum")
            elif metric.type in ("counter", "histogram"):
                prefix = metric.type
            else:
                continue
            f = self._file(prefix)
            previous: defaultdict[tuple[tuple[str, str], ...], float] = defaultdict(float)
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                value = sample.value
                if metric.type == "histogram":
                    if sample.name.endswith("_count"):
                        continue  # the merge derives it from the buckets
                    if sample.name.endswith("_bucket"):
                        # multiprocess files hold per-bucket counts; the merge accumulates
                        series = tuple(
                            sorted((k, v) for k, v in sample.labels.items() if k != "le")
                        )
                        value, previous[series] = value - previous[series], value
                names = list(sample.labels)
                key = mmap_key(
                    metric.name,
                    sample.name,
                    names,
                    [sample.labels[n] for n in names],
                    metric.documentation,
                )
                f.write_value(key, float(value), 0.0)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for f in self._files.values():
            f.close()  # type: ignore[no-untyped-call]
        self._files.clear()


def reap_dead_gauges(directory: str) -> None:
    """Remove live gauges of workers that exited (uvicorn has no hook for it)."""
    for path in glob.glob(os.path.join(directory, f"gauge_live*_{_FILE_TAG}*.db")):
        m = _OUR_FILE.search(path)
        if m is not None and not _alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def prepare_multiproc_dir(directory: str) -> None:
    """Empty ``directory`` of metric files: call once before starting workers
    (values left by an earlier run would otherwise be merged in)."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# -- the exporter ---------------------------------------------------------------------
class Exporter:
    """Renders a scrape; in multiprocess mode also keeps this worker's files current."""

    def __init__(self, root: CacheProxyApp, multiproc_dir: str | None = None) -> None:
        self._root = root
        if multiproc_dir is None:
            multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
        self._writer: MultiprocWriter | None = None
        if multiproc_dir:
            # Created if missing; if that fails the server does not start,
            # rather than run with metrics that silently show one worker.
            os.makedirs(multiproc_dir, exist_ok=True)
            self._writer = MultiprocWriter(multiproc_dir)
            MultiProcessCollector(self.registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(StatsCollector(root))
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._task: asyncio.Task[None] | None = None

    def sync(self) -> None:
        """Write this worker's values (multiprocess mode; no-op otherwise)."""
        if self._writer is not None:
            self._writer.write(families(self._root))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics if ``accept`` asks)."""
        if self._writer is not None and self.multiproc_dir:
            self.sync()
            reap_dead_gauges(self.multiproc_dir)
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def start(self) -> None:
        if self._writer is not None and self._task is None:
            self.sync()
            self._task = asyncio.create_task(self._sync_forever(), name="cacheproxy-metrics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self.sync()  # final values: counters of this worker outlive it
            self._writer.close()

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                self.sync()
            except Exception as exc:  # metrics must never take the proxy down
                log.warning("writing multiprocess metrics failed: %s", exc)
