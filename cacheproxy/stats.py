"""Counters the proxy keeps about itself.

Plain integers on the hot path (a dict increment per request); exporting them
(JSON stats, Prometheus) is done elsewhere, on demand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(rule name, cache outcome) -> requests answered."""
    upstream_requests: Counter[str] = field(default_factory=Counter)
    """rule name -> requests sent to slurmrestd."""
    upstream_errors: int = 0
    coalesced: int = 0
    invalidations: Counter[str] = field(default_factory=Counter)
    """tag -> times invalidated."""
    store_errors: int = 0
    auth_accepted: int = 0
    auth_refused: int = 0
    bad_requests: int = 0

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready view (for ``/_cacheproxy/stats``)."""
        by_outcome: Counter[str] = Counter()
        by_route: dict[str, dict[str, int]] = {}
        for (route, outcome), n in self.requests.items():
            by_outcome[outcome] += n
            by_route.setdefault(route, {})[outcome] = n
        total = sum(by_outcome.values())
        hits = by_outcome.get("hit", 0)
        return {
            "requests": total,
            "hits": hits,
            "hit_ratio": hits / total if total else 0.0,
            "by_outcome": dict(by_outcome),
            "by_route": by_route,
            "upstream_requests": sum(self.upstream_requests.values()),
            "upstream_by_route": dict(self.upstream_requests),
            "upstream_errors": self.upstream_errors,
            "coalesced": self.coalesced,
            "invalidations": dict(self.invalidations),
            "store_errors": self.store_errors,
            "auth_accepted": self.auth_accepted,
            "auth_refused": self.auth_refused,
            "bad_requests": self.bad_requests,
        }
