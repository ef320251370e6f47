"""Prometheus metrics at ``/_cacheproxy/metrics``.

The hot path only bumps plain counters in :class:`cacheproxy.stats.Stats`;
the families of :mod:`cacheproxy.ops.families` read them when needed, so a
request costs no prometheus-client call and no lock.

One process: a custom collector reads the families at scrape time, next to
prometheus-client's process and platform collectors.

Several uvicorn workers (``--workers N``) are several processes, each with
its own ``Stats``, and a scrape reaches only one of them.  With
``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the server starts
(an empty directory; ``cacheproxy serve`` empties it), prometheus-client's
multiprocess mode is used, through its public API only: each worker copies
its families into prometheus-client ``Counter``/``Gauge``/``Histogram``
objects about once a second (and at a scrape, and at shutdown), which
prometheus-client writes to that worker's files; a scrape merges every
worker's files with ``MultiProcessCollector``.  A counter of a worker that
exited still counts in the totals; gauges are ``live*`` and are removed with
``mark_process_dead`` once their worker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from cacheproxy.ops.families import GAUGE_MODES, families
from cacheproxy.ops.report import Report

log = logging.getLogger("cacheproxy.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client reads it when it is first imported: set it before the
process starts, not later."""
SYNC_SECONDS = 1.0
"""How often a worker writes its values for the others' scrapes to merge."""
_LIVE_FILE = re.compile(r"\Agauge_live\w*?_(\d+)\.db\Z")
"""prometheus-client's file of a worker's live gauges: ``gauge_<mode>_<pid>.db``."""

Labels = tuple[tuple[str, str], ...]


def multiproc_dir() -> str | None:
    """The multiprocess directory, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


# -- one process: read at scrape time ---------------------------------------------------
class ReportCollector:
    """A prometheus-client collector over one process's families."""

    def __init__(self, report: Report) -> None:
        self._report = report

    def collect(self) -> Iterable[Metric]:
        return families(self._report)


# -- several processes: copied into prometheus-client's own metric objects ---------------
def replay(bounds: Sequence[float], counts: Sequence[int], total: float) -> list[tuple[float, int]]:
    """Values to ``observe()`` so that a histogram gains ``counts[i]``
    observations in the bucket with upper bound ``bounds[i]`` (the last one
    ``+Inf``) and ``total`` in its sum: ``(value, times)`` pairs.

    Why: ``Stats`` keeps per-bucket counts and a sum, while prometheus-client's
    public API takes single observations.  Every observation starts at its
    bucket's upper bound (just above the last finite bound in ``+Inf``), and
    the difference to ``total`` is then taken off (or, for ``+Inf``, added)
    within the buckets' widths, so counts are exact and the sum is exact up to
    float rounding for non-negative observations.
    """
    rows: list[list[float]] = []  # [lowest allowed, value, times]
    low = 0.0
    for i, (high, count) in enumerate(zip(bounds, counts, strict=True)):
        lowest = low if i == 0 else math.nextafter(low, math.inf)
        if count > 0:
            start = high if high != math.inf else lowest
            rows.append([lowest, start, float(count)])
        low = high
    if not rows:
        return []
    excess: float = sum(value * n for _, value, n in rows) - total
    if excess < 0 and bounds[-1] == math.inf and counts[-1] > 0:
        rows[-1][1] += -excess / rows[-1][2]  # the +Inf bucket has no upper end
    elif excess > 0:
        for row in reversed(rows):
            lowest, value, n = row
            take = min(excess, (value - lowest) * n)
            row[1] = max(lowest, value - take / n)
            excess -= take
            if excess <= 0:
                break
    return [(value, int(n)) for _, value, n in rows]


class Mirror:
    """This process's families as prometheus-client metric objects, which in
    multiprocess mode write their values to this process's files.

    Counters and histograms receive what was added since the last copy;
    gauges are set.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._counted: dict[tuple[str, Labels], float] = {}
        self._observed: dict[tuple[str, Labels], tuple[list[int], float]] = {}

    def update(self, metrics: Iterable[Metric]) -> None:
        for metric in metrics:
            if metric.type == "counter":
                self._counter(metric)
            elif metric.type == "gauge":
                self._gauge(metric)
            elif metric.type == "histogram":
                self._histogram(metric)

    def _object(
        self, metric: Metric, labelnames: Sequence[str], bounds: Sequence[float] = ()
    ) -> Counter | Gauge | Histogram:
        found = self._metrics.get(metric.name)
        if found is None:
            # registry=None: the merged files are exposed, never these objects
            if metric.type == "counter":
                found = Counter(metric.name, metric.documentation, labelnames, registry=None)
            elif metric.type == "gauge":
                found = Gauge(
                    metric.name,
                    metric.documentation,
                    labelnames,
                    registry=None,
                    multiprocess_mode=GAUGE_MODES.get(metric.name, "livesum"),
                )
            else:
                found = Histogram(
                    metric.name, metric.documentation, labelnames, registry=None, buckets=bounds
                )
            self._metrics[metric.name] = found
        return found

    def _counter(self, metric: Metric) -> None:
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue  # _created: not kept in multiprocess mode
            labels = tuple(sample.labels.items())
            counter = self._object(metric, [k for k, _ in labels])
            key = (metric.name, labels)
            before = self._counted.get(key)
            if before == sample.value:
                continue  # unchanged: no file write
            added = sample.value - (before or 0.0)
            if added < 0:  # a counter went back (a store replaced): start over
                added = sample.value
            child = counter.labels(*[v for _, v in labels]) if labels else counter
            assert isinstance(child, Counter)
            child.inc(added)
            self._counted[key] = sample.value

    def _gauge(self, metric: Metric) -> None:
        for sample in metric.samples:
            labels = tuple(sample.labels.items())
            gauge = self._object(metric, [k for k, _ in labels])
            child = gauge.labels(*[v for _, v in labels]) if labels else gauge
            assert isinstance(child, Gauge)
            child.set(sample.value)

    def _histogram(self, metric: Metric) -> None:
        series: dict[Labels, tuple[list[float], list[float], float]] = {}
        for sample in metric.samples:
            labels = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            bounds, cumulative, total = series.get(labels, ([], [], 0.0))
            if sample.name.endswith("_bucket"):
                bounds.append(float(sample.labels["le"]))
                cumulative.append(sample.value)
            elif sample.name.endswith("_sum"):
                total = sample.value
            series[labels] = (bounds, cumulative, total)
        for labels, (bounds, cumulative, total) in series.items():
            counts = [int(c - p) for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
            key = (metric.name, labels)
            before, before_total = self._observed.get(key, ([0] * len(counts), 0.0))
            added = [n - b for n, b in zip(counts, before, strict=True)]
            if any(a < 0 for a in added):  # went back: start over
                added, before_total = counts, 0.0
            self._observed[key] = (counts, total)
            histogram = self._object(metric, [k for k, _ in labels], bounds[:-1])
            child = histogram.labels(*[v for _, v in labels]) if labels else histogram
            assert isinstance(child, Histogram)
            for value, times in replay(bounds, added, total - before_total):
                for _ in range(times):
                    child.observe(value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that exited: uvicorn has no hook that
    would call ``mark_process_dead`` when a worker goes, so a scrape does."""
    dead: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        m = _LIVE_FILE.match(os.path.basename(path))
        if m is not None and not _alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        with contextlib.suppress(FileNotFoundError):
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


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

    def __init__(self, report: Report) -> None:
        self._report = report
        self.multiproc_dir = multiproc_dir()
        self.registry = CollectorRegistry()
        self._mirror: Mirror | None = None
        if self.multiproc_dir:
            # Created if missing; if that fails the server does not start,
            # rather than run with metrics that silently show one worker.
            os.makedirs(self.multiproc_dir, exist_ok=True)
            self._mirror = Mirror()
            MultiProcessCollector(self.registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(ReportCollector(report))
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._task: asyncio.Task[None] | None = None

    def sync(self) -> None:
        """Write this worker's values (multiprocess mode; no-op otherwise)."""
        if self._mirror is not None:
            self._mirror.update(families(self._report))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics if ``accept`` asks)."""
        if self.multiproc_dir:
            self.sync()
            reap_dead_workers(self.multiproc_dir)
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def start(self) -> None:
        if self._mirror is not None and self._task is None:
            self.sync()
            self._task = asyncio.create_task(self._sync_forever(), name="cacheproxy-metrics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sync()  # final values: counters of this worker outlive it

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                self.sync()
            except Exception as exc:  # metrics must never take the proxy down
                log.warning("writing multiprocess metrics failed: %s", exc)
