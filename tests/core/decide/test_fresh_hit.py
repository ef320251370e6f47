"""FreshHit: fresh, valid, for an accepted credential; and only then."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.clock import Clock
from tests.core.decide.states import CRED, KEY, entry, found, jobs, nodes


def test_fresh_valid_accepted_is_a_hit_at_the_given_time() -> None:
    clock = Clock()
    e = entry(nodes(), clock, age=9.9)
    d = decide.on_lookup(nodes(), CRED, KEY, found(e, clock), clock())
    assert d == decide.FreshHit(e, clock())
    assert decide.is_fresh_hit(nodes(), CRED, KEY, found(e, clock), clock()) == d


def test_the_ttl_ends_the_hit() -> None:
    clock = Clock()
    e = entry(nodes(), clock)
    clock.advance(10)
    assert decide.is_fresh_hit(nodes(), CRED, KEY, found(e, clock), clock()) is None


def test_no_hit_for_a_credential_not_accepted_or_accepted_no_longer() -> None:
    clock = Clock()
    e = entry(nodes(), clock)
    assert decide.is_fresh_hit(nodes(), CRED, KEY, found(e, clock, accepted_for=0), clock()) is None
    lookup = found(e, clock, accepted_for=1)
    clock.advance(1)
    assert decide.is_fresh_hit(nodes(), CRED, KEY, lookup, clock()) is None


def test_no_hit_after_a_write_moved_the_generations() -> None:
    clock = Clock()
    e = entry(jobs(), clock, gens=(2,))  # stored before the write that made it 3
    assert decide.is_fresh_hit(jobs(), CRED, KEY, found(e, clock), clock()) is None


def test_no_entry_no_hit() -> None:
    clock = Clock()
    assert decide.is_fresh_hit(jobs(), CRED, KEY, found(None, clock), clock()) is None
