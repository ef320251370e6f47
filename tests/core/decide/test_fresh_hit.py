"""FreshHit: fresh, valid, for an accepted credential; and only then."""

from __future__ import annotations

from typing import Any

from cacheproxy.core import decide
from tests.clock import Clock
from tests.core.decide.states import CRED, KEY, entry, found, jobs, nodes


def fresh_hit(*args: Any) -> decide.FreshHit | None:
    decision = decide.on_lookup(*args)
    return decision if isinstance(decision, decide.FreshHit) else None


def test_fresh_valid_accepted_is_a_hit_at_the_given_time() -> None:
    clock = Clock()
    e = entry(nodes(), clock, age=9.9)
    d = decide.on_lookup(nodes(), CRED, KEY, found(e, clock), clock())
    assert d == decide.FreshHit(e, clock())


def test_the_ttl_ends_the_hit() -> None:
    clock = Clock()
    e = entry(nodes(), clock)
    clock.advance(10)
    assert fresh_hit(nodes(), CRED, KEY, found(e, clock), clock()) is None


def test_no_hit_for_a_credential_not_accepted_or_accepted_no_longer() -> None:
    clock = Clock()
    e = entry(nodes(), clock)
    assert fresh_hit(nodes(), CRED, KEY, found(e, clock, accepted_for=0), clock()) is None
    lookup = found(e, clock, accepted_for=1)
    clock.advance(1)
    assert fresh_hit(nodes(), CRED, KEY, lookup, clock()) is None


def test_no_hit_after_a_write_moved_the_generations() -> None:
    clock = Clock()
    e = entry(jobs(), clock, gens=(2,))  # stored before the write that made it 3
    assert fresh_hit(jobs(), CRED, KEY, found(e, clock), clock()) is None


def test_no_entry_no_hit() -> None:
    clock = Clock()
    assert fresh_hit(jobs(), CRED, KEY, found(None, clock), clock()) is None
