"""The proxy's metric families: names, meanings, and where each value is read.

Written once, and used both ways :mod:`cacheproxy.ops.metrics` exposes them:
read at scrape time by a custom collector (one process), or copied into
prometheus-client's metric objects (several worker processes).  The names are
what ``config/grafana-dashboard.json`` and ``config/prometheus-alerts.yml``
query (tests/ops/test_dashboard.py, test_alerts.py): renaming one breaks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cacheproxy import __version__
from cacheproxy.ops.report import Report
from cacheproxy.stats import Histogram, Stats

GAUGE_MODES: dict[str, Literal["livesum", "livemax", "livemin"]] = {
    "cacheproxy_ready": "livemin",
    "cacheproxy_stale_age_max_seconds": "livemax",
    "cacheproxy_upstream_circuit_open": "livemax",
    "cacheproxy_store_circuit_open": "livemax",
    "cacheproxy_build_info": "livemax",
    "cacheproxy_shared_routes_demoted": "livemax",
}
"""How a gauge of several workers merges (prometheus-client's
``multiprocess_mode``); the others are ``livesum``.  Live: a worker's gauges
vanish with it, while its counters still count."""


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


def _by_route(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter by rule name, exported (and graphed) before its first count."""
    family = CounterMetricFamily(name, doc, labels=["route"])
    for route, n in counts.items():
        family.add_metric([route], n)
    if not counts:
        family.add_metric(["-"], 0)
    return family


def sharing_families(stats: Stats) -> list[Metric]:
    """Shared views (docs/scopes.md): what sharing saves, and what it withholds."""
    return [
        _by_route(
            "cacheproxy_shared_hits",
            "Fresh hits answered from a shared entry (one entry for every accepted "
            'credential), by rule name; included in cacheproxy_requests_total{cache="hit"}.',
            stats.shared_hits,
        ),
        _by_route(
            "cacheproxy_shared_proofs",
            "Requests of a credential slurmrestd had not accepted yet, on a shared route, "
            "sent upstream as its own user to prove it (its first miss), by rule name.",
            stats.shared_proofs,
        ),
        _by_route(
            "cacheproxy_shared_withheld",
            "Requests not answered from a fresh shared entry because their credential was "
            "not accepted (they went upstream as their user), by rule name.",
            stats.shared_withheld,
        ),
    ]


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
    responses = CounterMetricFamily(
        "cacheproxy_http_responses",
        "Responses sent to clients, by rule name (route; '-': no rule, e.g. the proxy's "
        "own endpoints or a refusal before matching) and status class (code: 2xx..5xx).",
        labels=["route", "code"],
    )
    for (route, code), n in stats.responses.items():
        responses.add_metric([route, code], n)
    duration = HistogramMetricFamily(
        "cacheproxy_request_duration_seconds",
        "Seconds from a request's arrival to the end of its response, as the client "
        "saw it, by rule name and cache outcome (as cacheproxy_requests; none: no "
        "Cache-Status, e.g. the own endpoints or a 429).",
        labels=["route", "cache"],
    )
    for (route, cache), hist in stats.request_latency.items():
        _histogram(duration, [route, cache], hist)
    upstream = CounterMetricFamily(
        "cacheproxy_upstream_requests",
        "Requests sent to slurmrestd, by rule name.",
        labels=["route"],
    )
    for route, n in stats.upstream_requests.items():
        upstream.add_metric([route], n)
    too_big = CounterMetricFamily(
        "cacheproxy_too_big_to_cache",
        "Answers passed through but not stored, being larger than max_entry_bytes, by rule name.",
        labels=["route"],
    )
    for route, n in stats.too_big.items():
        too_big.add_metric([route], n)
    if not stats.too_big:
        too_big.add_metric(["-"], 0)  # exported (and graphed) before the first one
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
    audits = CounterMetricFamily(
        "cacheproxy_shared_audits",
        "Comparisons of a shared entry with another user's answer at the same moment, "
        "by rule name and result (same, different, inconclusive); upstream requests "
        "they cost are in cacheproxy_upstream_requests_total.",
        labels=["route", "result"],
    )
    for (route, result), n in stats.shared_audits.items():
        audits.add_metric([route, result], n)
    return [
        requests,
        responses,
        duration,
        upstream,
        too_big,
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
        *sharing_families(stats),
        audits,
        GaugeMetricFamily(
            "cacheproxy_shared_routes_demoted",
            "Shared routes the audit turned back to per user (PrivateData is wrong: "
            "see docs/OPERATIONS.md); alert on > 0.",
            value=len(stats.demoted_routes),
        ),
        _counter(
            "cacheproxy_internal_errors",
            "Unexpected exceptions caught (a bug: please report).",
            stats.internal_errors,
        ),
    ]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def runtime_families(report: Report) -> list[Metric]:
    """Families read from the store, transport and coalescer at scrape time."""
    info = GaugeMetricFamily(
        "cacheproxy_build_info", "cacheproxy's version (value always 1).", labels=["version"]
    )
    info.add_metric([__version__], 1)
    out: list[Metric] = [info]
    if not report.started:
        return out
    if report.stats.ready is not None:
        out.append(
            _gauge(
                "cacheproxy_ready",
                "1 when the last readiness check (/_cacheproxy/ready, asked by the load "
                "balancer) found slurmrestd answering, else 0.",
                report.stats.ready,
            )
        )
    store = report.store_state()
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
    transport = report.transport_state()
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
            report.fetches_in_flight(),
        )
    )
    return out


def families(report: Report) -> list[Metric]:
    """Every family of the proxy's own, read now."""
    return stats_families(report.stats) + runtime_families(report)
