"""Builders for the decision tests: a rule's match, an entry, a lookup,
on the injected clock of :mod:`tests.clock` (no I/O anywhere)."""

from __future__ import annotations

from cacheproxy.core.rules import Match, RuleSet
from cacheproxy.store.base import Entry, Lookup
from tests.clock import Clock

RULES = RuleSet.from_toml(
    """
[[rule]]
name = "jobs"
path = "/slurm/{v}/jobs"
ttl = 10
tags = ["jobs"]
stale_if_error = 300
stale_while_revalidate = 5
revalidate = "update_time"

[[rule]]
name = "nodes"
path = "/slurm/{v}/nodes"
ttl = 10
tags = ["nodes"]

[[rule]]
name = "cancel"
methods = ["DELETE"]
path = "/slurm/{v}/job/{job_id}"
invalidates = ["jobs", "job:{job_id:base}"]
"""
)
KEY = b"k" * 32
CRED = b"c" * 32
GENS = (3,)


def jobs() -> Match:
    return RULES.match("GET", ("slurm", "v0.0.43", "jobs"))


def nodes() -> Match:
    return RULES.match("GET", ("slurm", "v0.0.43", "nodes"))


def cancel() -> Match:
    return RULES.match("DELETE", ("slurm", "v0.0.43", "job", "42"))


def entry(match: Match, clock: Clock, *, age: float = 0.0, gens: tuple[int, ...] = GENS) -> Entry:
    return Entry(
        status=200,
        headers=[(b"content-type", b"application/json"), (b"content-length", b"2")],
        body=b"{}",
        stored_at=clock() - age,
        ttl=match.ttl,
        tags=match.tags,
        generations=gens,
        origin=clock() - age,
    )


def found(e: Entry | None, clock: Clock, *, accepted_for: float = 60.0) -> Lookup:
    return Lookup(e, GENS, clock() + accepted_for)
