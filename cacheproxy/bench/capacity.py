"""``--sweep users=...``: the most users an upstream budget supports.

Upstream load is measured at a few user counts; between them it is
interpolated linearly (load grows about linearly with users direct, and
sub-linearly through a cache), and beyond the largest count it is
extrapolated from the last two points, which the report flags.  Extrapolating
a cache's curve linearly is pessimistic for the cache: its load flattens as
more users share the same entries.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Capacity:
    users: int
    extrapolated: bool
    """True when the budget lies beyond the largest measured user count."""

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "extrapolated": self.extrapolated}


def max_users(points: Sequence[tuple[int, float]], budget: float) -> Capacity:
    """Largest user count whose upstream req/s stays within ``budget``.

    ``points`` are (users, upstream req/s); (0, 0) is implied.
    """
    pts = sorted({(0, 0.0), *((int(u), float(r)) for u, r in points)})
    for (u0, r0), (u1, r1) in itertools.pairwise(pts):
        if r1 > budget:
            if r1 == r0:
                return Capacity(u0, False)
            frac = (budget - r0) / (r1 - r0)
            return Capacity(max(u0, int(u0 + frac * (u1 - u0))), False)
    (u0, r0), (u1, r1) = pts[-2], pts[-1]
    slope = (r1 - r0) / (u1 - u0) if u1 > u0 else 0.0
    if slope <= 0:
        return Capacity(u1, True)
    return Capacity(int(u1 + (budget - r1) / slope), True)


def parse_sweep(text: str) -> list[int]:
    """``users=10,100,1000`` -> [10, 100, 1000]."""
    name, _, values = text.partition("=")
    if name.strip() != "users" or not values:
        raise ValueError(f"--sweep expects users=N,N,...; got {text!r}")
    out = sorted({int(v) for v in values.split(",") if v.strip()})
    if not out or out[0] <= 0:
        raise ValueError(f"--sweep user counts must be positive: {text!r}")
    return out


def capacity_report(
    sweep: Sequence[dict[str, Any]], budget: float, targets: Sequence[str]
) -> dict[str, Any]:
    """``sweep`` items: {"users": N, "runs": {target: run summary}}."""
    out: dict[str, Any] = {"upstream_budget_rps": budget, "max_users": {}}
    for target in targets:
        pts = [
            (int(p["users"]), float(p["runs"][target]["upstream_rps"]))
            for p in sweep
            if target in p["runs"]
        ]
        if pts:
            out["max_users"][target] = max_users(pts, budget).to_json()
            shaky = [int(p["users"]) for p in sweep if p["runs"].get(target, {}).get("saturated")]
            if shaky:
                # Failed or late requests never reached upstream: demand is higher there.
                out["max_users"][target]["saturated_at"] = shaky
    return out
