"""Revalidate: a Fetch that asks ``update_time`` for an expired, valid copy
of a rule that revalidates."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.clock import Clock
from tests.core.decide.states import CRED, KEY, entry, found, jobs, nodes


def test_an_expired_valid_copy_is_revalidated() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=400)  # past every stale window
    d = decide.on_lookup(jobs(), CRED, KEY, found(e, clock), clock())
    assert isinstance(d, decide.Revalidate)
    assert d.revalidate == e
    assert d.fallback is None


def test_a_rule_without_revalidate_fetches_whole() -> None:
    clock = Clock()
    e = entry(nodes(), clock, age=60)
    d = decide.on_lookup(nodes(), CRED, KEY, found(e, clock), clock())
    assert isinstance(d, decide.Fetch)
    assert d.revalidate is None


def test_an_invalidated_copy_is_not_revalidated() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=60, gens=(1,))
    d = decide.on_lookup(jobs(), CRED, KEY, found(e, clock), clock())
    assert isinstance(d, decide.Fetch)
    assert d.revalidate is None
