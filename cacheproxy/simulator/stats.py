"""Request counters served at ``GET /_sim/stats`` (shape fixed by docs/CONTRACTS.md)."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    """Counts per normalised route template and per method, plus lock figures.

    ``lock_wait_seconds`` sums the time requests queued for the simulated
    controller lock; ``busy_seconds`` the service time spent holding it (or
    in slurmdbd), so the harness can tell a saturated upstream from an idle one.
    Both are also kept per route (``busy_by_route``, ``lock_wait_by_route``,
    keyed as ``by_route``): what each route costs the controller.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_route: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.lock_wait_seconds = 0.0
        self.busy_seconds = 0.0
        self.busy_by_route: dict[str, float] = {}
        self.lock_wait_by_route: dict[str, float] = {}

    def charge(self, route: str, wait: float, busy: float) -> None:
        """Add one request's queueing and service time (``route``: "" if unknown)."""
        self.lock_wait_seconds += wait
        self.busy_seconds += busy
        if route:
            self.lock_wait_by_route[route] = self.lock_wait_by_route.get(route, 0.0) + wait
            self.busy_by_route[route] = self.busy_by_route.get(route, 0.0) + busy

    def count(self, method: str, route: str) -> None:
        self.total += 1
        self.by_route[f"{method} {route}"] += 1
        self.by_method[method] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_route": dict(sorted(self.by_route.items())),
            "by_method": dict(sorted(self.by_method.items())),
            "lock_wait_seconds": round(self.lock_wait_seconds, 6),
            "busy_seconds": round(self.busy_seconds, 6),
            "busy_by_route": {k: round(v, 6) for k, v in sorted(self.busy_by_route.items())},
            "lock_wait_by_route": {
                k: round(v, 6) for k, v in sorted(self.lock_wait_by_route.items())
            },
        }
