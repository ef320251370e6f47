"""Counters the proxy keeps about itself.

Plain integers and lists on the hot path (a dict increment per request);
exporting them (JSON stats, Prometheus, the status page) is done elsewhere, on
demand, by reading these fields: a scrape costs the proxy nothing between
scrapes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

UPSTREAM_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
"""Upper bounds (seconds) of the upstream latency buckets: slurmctld answers
in milliseconds when idle, slurmdbd reads take up to seconds, a big /jobs
list under load tens of seconds."""

REQUEST_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    120.0,
)
"""Upper bounds (seconds) of the client-facing request durations: a hit is
answered in well under a millisecond, a miss takes what slurmrestd takes."""

STALE_AGE_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
"""Upper bounds (seconds) of the age of entries served stale."""

MAX_TAG_SERIES = 256
"""Distinct (folded) tags counted separately; further ones count as
:data:`OTHER_TAG`.  A rules file with a templated tag that has no ``:`` would
otherwise grow a series per job, node or user."""
OTHER_TAG = "(other)"
RECENT_INVALIDATIONS = 50
"""Invalidations remembered for the status page and the admin API."""


def fold_tag(tag: str) -> str:
    """``job:123`` -> ``job:*``: per-object tags become one series per kind.

    Tags name a kind before ``:`` and an object after it (the rules'
    convention: ``job:{job_id:base}``, ``db.job:{job_id:base}``,
    ``@user:<hash>``); the object part would make metrics and this process's
    memory grow with every job ever touched.
    """
    head, sep, _ = tag.partition(":")
    return head + ":*" if sep else tag


class Histogram:
    """A fixed-bucket histogram in plain lists: one bisect and two additions
    per observation, no locks (the proxy runs on one event loop)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Per bucket, not cumulative; the last one is ``+Inf``."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)``, ending with ``+Inf``."""
        out = []
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimated ``q``-quantile (as Prometheus' ``histogram_quantile``:
        linear within the bucket); None without observations."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        lower = 0.0
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            if n and seen + n >= rank:
                return lower + (bound - lower) * (rank - seen) / n
            seen += n
            lower = bound
        return self.bounds[-1]  # in the +Inf bucket: the largest finite bound

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "sum": self.sum,
            "le": list(self.bounds),
            "counts": list(self.counts),
            "p50": self.quantile(0.5),
            "p95": self.quantile(0.95),
        }


_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def _by_route(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (route, what), n in counts.items():
        out.setdefault(route, {})[what] = n
    return out


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Consecutive bumps of the same tags for the same reason (``write`` or
    ``admin``): ``count`` of them, the last ``at``.  A proxied write bumps its
    tags twice (before and after forwarding), and a burst of submits would
    otherwise push everything else out of the ring."""

    at: float
    tags: tuple[str, ...]
    source: str
    count: int = 1


@dataclass
class Stats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(rule name, cache outcome) -> requests answered."""
    upstream_requests: Counter[str] = field(default_factory=Counter)
    """rule name -> requests sent to slurmrestd."""
    upstream_errors: int = 0
    coalesced: int = 0
    fast_hits: int = 0
    """Hits answered in the server's fast lane (a subset of the ``hit``
    outcomes in :attr:`requests`; see :mod:`cacheproxy.http.server`)."""
    fast_forwards: int = 0
    """GETs passed through and answered in the fast lane (a subset of the
    ``fwd=...`` outcomes in :attr:`requests`)."""
    invalidations: Counter[str] = field(default_factory=Counter)
    """folded tag (``job:*``) -> times invalidated; see :meth:`invalidated`."""
    store_errors: int = 0
    auth_accepted: int = 0
    auth_refused: int = 0
    bad_requests: int = 0
    # -- hardening (guard.py, jwtcheck.py, upstream/protect.py, stale serving)
    stale_served: int = 0
    """Expired entries served because upstream failed (or while revalidating)."""
    max_stale_age: float = 0.0
    """Largest age (seconds since stored) of an entry served stale."""
    upstream_busy: int = 0
    """Requests refused (503) because too many were in flight upstream."""
    breaker_rejected: int = 0
    """Requests failed fast while the upstream circuit breaker was open."""
    upstream_throttled: int = 0
    """slurmrestd answers "Rate limit exceeded" (502): a user slurmctld asked to slow down."""
    auth_blocked: int = 0
    """Requests answered 429 after repeated authentication failures."""
    auth_trials: int = 0
    """Never-accepted credentials let through a blocked user name for one
    upstream check (guard.py: bounded per name, address and credential)."""
    auth_proven: int = 0
    """Requests let through a block because their tokens verified locally."""
    rate_limited: int = 0
    """Requests answered 429 by the per-user rate limit."""
    jwt_rejected: int = 0
    """Tokens refused by local JWT verification (never sent upstream)."""
    internal_errors: int = 0
    """Unexpected exceptions caught by the outermost middleware (a bug)."""
    # -- shared views (http/proxy.py: counted where it decides them)
    shared_hits: Counter[str] = field(default_factory=Counter)
    """rule name -> fresh hits answered from a shared entry (one entry for
    every accepted credential; a subset of the ``hit`` outcomes)."""
    shared_proofs: Counter[str] = field(default_factory=Counter)
    """rule name -> requests of a credential not (yet) accepted on a shared
    route, sent upstream as its own user to prove it (its first miss)."""
    shared_withheld: Counter[str] = field(default_factory=Counter)
    """rule name -> requests not answered from a fresh shared entry because
    their credential was not accepted (they went upstream as their user)."""
    # -- the audit of shared views (http/audit.py)
    shared_audits: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(rule name, verdict: same, different, inconclusive) -> comparisons."""
    demoted_routes: dict[str, str] = field(default_factory=dict)
    """rule name -> why the audit turned it back to per user (this process's life)."""
    # -- operations (metrics, status page)
    answered: dict[tuple[str, int, str], Histogram] = field(default_factory=dict)
    """(rule name, status, cache outcome) -> seconds from the request's
    arrival to the end of its response, as the client saw it.  One entry per
    distinct triple, made once: a response is one dict read and one
    observation (:attr:`responses` and :attr:`request_latency` are summed
    from it when read)."""
    upstream_latency: dict[str, Histogram] = field(default_factory=dict)
    """rule name -> seconds until slurmrestd's response head arrived."""
    ready: int | None = None
    """The last readiness verdict (1 ready, 0 not; None: never asked)."""
    stale_age: Histogram = field(default_factory=lambda: Histogram(STALE_AGE_BUCKETS))
    stale_by_route: Counter[str] = field(default_factory=Counter)
    too_big: Counter[str] = field(default_factory=Counter)
    """rule name -> answers passed to their clients but not stored, being
    larger than ``max_entry_bytes`` (the most expensive calls, never cached)."""
    recent_invalidations: deque[Invalidation] = field(
        default_factory=lambda: deque(maxlen=RECENT_INVALIDATIONS)
    )
    started_at: float = field(default_factory=time.time)

    # -- hooks for the proxy (cheap: called per upstream request or write) ---
    def observe_upstream(self, route: str, seconds: float) -> None:
        """Record how long slurmrestd took to answer (response head) for ``route``."""
        hist = self.upstream_latency.get(route)
        if hist is None:
            hist = self.upstream_latency[route] = Histogram(UPSTREAM_BUCKETS)
        hist.observe(seconds)

    def observe_response(self, route: str, status: int, cache: str, seconds: float) -> None:
        """Record one answered request as its client saw it."""
        key = (route, status, cache)
        hist = self.answered.get(key)
        if hist is None:
            hist = self.answered[key] = Histogram(REQUEST_BUCKETS)
        hist.counts[bisect_left(REQUEST_BUCKETS, seconds)] += 1  # (observe(), inlined)
        hist.sum += seconds

    @property
    def responses(self) -> Counter[tuple[str, str]]:
        """(rule name, status class ``2xx``..``5xx``) -> responses sent to clients."""
        out: Counter[tuple[str, str]] = Counter()
        for (route, status, _), hist in self.answered.items():
            out[(route, _STATUS_CLASS.get(status // 100, "other"))] += hist.count
        return out

    @property
    def request_latency(self) -> dict[tuple[str, str], Histogram]:
        """(rule name, cache outcome) -> the durations of :attr:`answered`,
        whatever the status."""
        out: dict[tuple[str, str], Histogram] = {}
        for (route, _, cache), hist in self.answered.items():
            merged = out.get((route, cache))
            if merged is None:
                merged = out[(route, cache)] = Histogram(REQUEST_BUCKETS)
            merged.counts = [a + b for a, b in zip(merged.counts, hist.counts, strict=True)]
            merged.sum += hist.sum
        return out

    def observe_stale(self, route: str, age: float) -> None:
        """Record one expired entry served stale, ``age`` seconds after it was stored."""
        self.stale_served += 1
        self.stale_by_route[route] += 1
        self.stale_age.observe(age)
        if age > self.max_stale_age:
            self.max_stale_age = age

    def invalidated(self, tags: Iterable[str], source: str = "write") -> None:
        """Count a bump of ``tags`` (folded) and remember it for the status page."""
        kept = tuple(tags)
        counts = self.invalidations
        for tag in kept:
            folded = fold_tag(tag)
            if folded not in counts and len(counts) >= MAX_TAG_SERIES:
                folded = OTHER_TAG
            counts[folded] += 1
        recent = self.recent_invalidations
        last = recent[-1] if recent else None
        if last is not None and last.tags == kept and last.source == source:
            recent[-1] = Invalidation(time.time(), kept, source, last.count + 1)
        else:
            recent.append(Invalidation(time.time(), kept, source))

    # -- views ----------------------------------------------------------------
    def invalidations_folded(self) -> Counter[str]:
        """Invalidations per folded tag, bounded to :data:`MAX_TAG_SERIES`
        series even if a caller counted raw tags into :attr:`invalidations`."""
        out: Counter[str] = Counter()
        for tag, n in self.invalidations.items():
            folded = fold_tag(tag)
            if folded not in out and len(out) >= MAX_TAG_SERIES:
                folded = OTHER_TAG
            out[folded] += n
        return out

    def snapshot(self, *, raw_tags: bool = False) -> dict[str, object]:
        """A JSON-ready view (for ``/_cacheproxy/stats`` and the status page).

        ``raw_tags`` keeps object ids in recent invalidations (``job:123``,
        for the admin API); the public view folds them (``job:*``).
        """
        by_outcome: Counter[str] = Counter()
        by_route: dict[str, dict[str, int]] = {}
        for (route, outcome), n in self.requests.items():
            by_outcome[outcome] += n
            by_route.setdefault(route, {})[outcome] = n
        total = sum(by_outcome.values())
        hits = by_outcome.get("hit", 0)
        upstream = sum(self.upstream_requests.values())
        saved = max(0, total - upstream)
        show = (lambda t: t) if raw_tags else fold_tag
        return {
            "requests": total,
            "hits": hits,
            "hit_ratio": hits / total if total else 0.0,
            "by_outcome": dict(by_outcome),
            "by_route": by_route,
            "upstream_requests": upstream,
            "upstream_by_route": dict(self.upstream_requests),
            "upstream_saved": saved,
            "saved_ratio": saved / total if total else 0.0,
            "upstream_errors": self.upstream_errors,
            "upstream_latency": {r: h.to_json() for r, h in self.upstream_latency.items()},
            "coalesced": self.coalesced,
            "fast_hits": self.fast_hits,
            "fast_forwards": self.fast_forwards,
            "invalidations": dict(self.invalidations_folded()),
            "recent_invalidations": [
                {
                    "at": inv.at,
                    "tags": list(dict.fromkeys(show(t) for t in inv.tags)),
                    "source": inv.source,
                    "count": inv.count,
                }
                for inv in reversed(self.recent_invalidations)
            ],
            "store_errors": self.store_errors,
            "auth_accepted": self.auth_accepted,
            "auth_refused": self.auth_refused,
            "bad_requests": self.bad_requests,
            "stale_served": self.stale_served,
            "stale_by_route": dict(self.stale_by_route),
            "too_big_by_route": dict(self.too_big),
            "max_stale_age": self.max_stale_age,
            "upstream_busy": self.upstream_busy,
            "breaker_rejected": self.breaker_rejected,
            "upstream_throttled": self.upstream_throttled,
            "auth_blocked": self.auth_blocked,
            "auth_trials": self.auth_trials,
            "auth_proven": self.auth_proven,
            "rate_limited": self.rate_limited,
            "jwt_rejected": self.jwt_rejected,
            "internal_errors": self.internal_errors,
            "shared_hits": dict(self.shared_hits),
            "shared_proofs": dict(self.shared_proofs),
            "shared_withheld": dict(self.shared_withheld),
            "shared_audits": _by_route(self.shared_audits),
            "demoted_routes": dict(self.demoted_routes),
            "started_at": self.started_at,
            "uptime_seconds": max(0.0, time.time() - self.started_at),
        }
