"""StaleWhileRevalidate: an expired, valid entry within the rule's window,
for an accepted credential."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.clock import Clock
from tests.core.decide.states import CRED, KEY, entry, found, jobs, nodes


def test_within_the_window_the_stale_entry_is_served_and_revalidated() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=14.9)  # ttl 10, stale_while_revalidate 5
    d = decide.on_lookup(jobs(), CRED, KEY, found(e, clock), clock())
    assert d == decide.StaleWhileRevalidate(e, revalidate=e)


def test_past_the_window_it_fetches_with_the_entry_as_fallback() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=15)
    d = decide.on_lookup(jobs(), CRED, KEY, found(e, clock), clock())
    assert isinstance(d, decide.Fetch)
    assert d.fallback == e


def test_never_for_a_credential_not_accepted() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=12)
    d = decide.on_lookup(jobs(), CRED, KEY, found(e, clock, accepted_for=0), clock())
    assert isinstance(d, decide.Fetch)
    assert d.fallback is None
    assert d.revalidate is None


def test_never_after_a_write() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=12, gens=(2,))
    d = decide.on_lookup(jobs(), CRED, KEY, found(e, clock), clock())
    assert isinstance(d, decide.Fetch)
    assert d.fallback is None
    assert d.revalidate is None


def test_not_for_a_rule_without_the_window() -> None:
    clock = Clock()
    e = entry(nodes(), clock, age=11)
    assert isinstance(decide.on_lookup(nodes(), CRED, KEY, found(e, clock), clock()), decide.Fetch)
