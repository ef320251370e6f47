"""The one circuit breaker (slurmrestd and the Redis tier), driven by an
injected monotonic clock."""

from __future__ import annotations

import logging

import pytest

from cacheproxy.circuit import CircuitBreaker
from tests.clock import Clock


@pytest.fixture
def mono() -> Clock:
    return Clock(1000.0)


def test_closed_circuit_lets_everything_through(mono: Clock) -> None:
    c = CircuitBreaker("dep", monotonic=mono)
    for _ in range(5):
        t = c.enter()
        assert t is not None
        assert not t.probe
        c.success(t)
    assert not c.is_open
    assert c.faults == 0


def test_fault_opens_then_one_probe_closes(mono: Clock, caplog: pytest.LogCaptureFixture) -> None:
    c = CircuitBreaker("dep", cooldown=1.0, monotonic=mono)
    caplog.set_level(logging.INFO, "cacheproxy.circuit")
    t = c.enter()
    assert t is not None
    c.failure(t, OSError("refused"))
    assert c.is_open
    assert c.episodes == 1
    assert c.enter() is None  # fail fast
    mono.advance(0.5)
    assert c.enter() is None
    mono.advance(0.6)
    probe = c.enter()
    assert probe is not None
    assert probe.probe
    assert c.enter() is None  # only one probe at a time
    c.success(probe)
    assert not c.is_open
    assert c.rejected == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unavailable" in warnings[0].getMessage()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_failed_probe_reopens(mono: Clock) -> None:
    c = CircuitBreaker("dep", monotonic=mono)
    c.failure(None, "down")
    mono.advance(1.1)
    probe = c.enter()
    assert probe is not None
    assert probe.probe
    c.failure(probe, "still down")
    assert c.enter() is None
    mono.advance(1.1)
    assert c.enter() is not None  # the cool-down did not grow (no max_cooldown)
    assert c.episodes == 1
    assert c.faults == 2


def test_failed_probe_doubles_the_cooldown_up_to_the_bound(mono: Clock) -> None:
    c = CircuitBreaker("dep", threshold=1, cooldown=1.0, max_cooldown=3.0, monotonic=mono)
    c.strike(c.enter(), "down")
    for expected in (2.0, 3.0, 3.0):
        mono.advance(10)
        probe = c.enter()
        assert probe is not None
        assert probe.probe
        c.strike(probe, "still down")  # a probe's strike is a verdict
        assert c.retry_after() == expected
        mono.advance(expected - 0.01)
        assert c.enter() is None
    mono.advance(0.02)
    probe = c.enter()
    assert probe is not None
    c.success(probe)
    c.failure(c.enter(), "down again")
    assert c.retry_after() == 1.0  # a success resets the cool-down


def test_one_warning_per_episode(mono: Clock, caplog: pytest.LogCaptureFixture) -> None:
    c = CircuitBreaker("dep", monotonic=mono)
    for _ in range(50):
        c.failure(None, "down")
    assert c.faults == 50
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_late_failures_do_not_postpone_the_probe(mono: Clock) -> None:
    c = CircuitBreaker("dep", cooldown=1.0, monotonic=mono)
    early = [c.enter(), c.enter()]
    c.failure(early[0], "down")
    mono.advance(0.9)
    c.failure(early[1], "down")  # admitted before the circuit opened
    mono.advance(0.2)
    probe = c.enter()
    assert probe is not None
    assert probe.probe


def test_late_success_of_an_old_call_does_not_close(mono: Clock) -> None:
    c = CircuitBreaker("dep", monotonic=mono)
    before = c.enter()
    assert before is not None
    c.failure(None, "down")
    c.success(before)  # started before the fault
    assert c.is_open


def test_abandoned_probe_lets_another_probe(mono: Clock) -> None:
    c = CircuitBreaker("dep", monotonic=mono)
    c.failure(None, "down")
    mono.advance(2)
    probe = c.enter()
    assert probe is not None
    c.abandon(probe)
    assert c.enter() is not None


def test_strikes_open_only_when_consecutive(mono: Clock) -> None:
    c = CircuitBreaker("dep", threshold=3, monotonic=mono)
    for _ in range(2):
        c.strike(c.enter(), TimeoutError("slow"))
    c.success(c.enter())  # the run is broken: counting starts again
    for _ in range(2):
        c.strike(c.enter(), TimeoutError("slow"))
    assert not c.is_open
    assert c.consecutive == 2
    c.strike(c.enter(), TimeoutError("slow"))
    assert c.is_open
    assert c.faults == 5
    assert c.episodes == 1


def test_threshold_zero_never_opens_on_strikes(mono: Clock) -> None:
    c = CircuitBreaker("dep", threshold=0, monotonic=mono)
    for _ in range(20):
        c.strike(c.enter(), "down")
    assert not c.is_open
    assert c.faults == 20


def test_retry_after_while_a_probe_is_out(mono: Clock) -> None:
    c = CircuitBreaker("dep", cooldown=5.0, monotonic=mono)
    c.failure(None, "down")
    mono.advance(2)
    assert c.retry_after() == 3.0
    mono.advance(3)
    assert c.enter() is not None
    assert c.retry_after() == 5.0  # the probe decides; until then a cool-down
