"""Fetch (join or start the key's flight), and what follows the flight."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.clock import Clock
from tests.core.decide.states import CRED, GENS, KEY, entry, found, jobs, nodes


def test_accepted_misses_share_the_key_and_join_the_acceptance_fetch() -> None:
    clock = Clock()
    d = decide.on_lookup(nodes(), CRED, KEY, found(None, clock), clock())
    assert d == decide.Fetch(KEY, KEY + CRED, True, None, None)
    assert not d.forget_credential


def test_unaccepted_credentials_coalesce_only_with_themselves() -> None:
    clock = Clock()
    d = decide.on_lookup(nodes(), CRED, KEY, found(None, clock, accepted_for=0), clock())
    assert d == decide.Fetch(KEY + CRED, None, False, None, None)
    assert d.forget_credential


def test_store_down_is_a_fetch_with_nothing_trusted() -> None:
    clock = Clock()
    down = decide.store_down(local_writes=4)
    assert down.generations == (decide.STORE_DOWN, 4)
    d = decide.on_lookup(jobs(), CRED, KEY, down, clock())
    assert isinstance(d, decide.Fetch)
    assert not d.accepted


def test_a_refused_leader_sends_a_joiner_upstream_itself() -> None:
    fetch = decide.Fetch(KEY, None, True, None, None)
    assert decide.after_flight(fetch, led=False, refused=True, failed=False) == decide.FORWARD_OWN
    assert decide.after_flight(fetch, led=True, refused=False, failed=False) == decide.SEND_FLIGHT


def test_a_failed_flight_is_stood_in_for_by_the_fallback() -> None:
    clock = Clock()
    e = entry(jobs(), clock, age=20)
    with_fallback = decide.Fetch(KEY, None, True, None, e)
    without = decide.Fetch(KEY, None, True, None, None)
    assert decide.after_flight(with_fallback, True, False, True) == decide.ServeStale(e)
    assert decide.after_flight(without, True, False, True) == decide.SEND_FLIGHT
    assert decide.on_flight_error(with_fallback) == decide.ServeStale(e)
    assert decide.on_flight_error(without) == decide.UPSTREAM_FAILED


def test_a_peer_entry_completes_a_flight_only_under_its_generations() -> None:
    clock = Clock()
    e = entry(nodes(), clock)
    lookup = found(e, clock)
    assert decide.peer_entry_usable(e, nodes(), lookup, GENS, clock())
    assert not decide.peer_entry_usable(e, nodes(), lookup, (9,), clock())
    clock.advance(10)
    assert not decide.peer_entry_usable(e, nodes(), lookup, GENS, clock())
