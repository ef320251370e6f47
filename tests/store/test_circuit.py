"""The circuit breaker, driven by an injected monotonic clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cacheproxy.store.circuit import Circuit


def test_closed_circuit_lets_everything_through(mono: Any) -> None:
    c = Circuit("dep", monotonic=mono)
    for _ in range(5):
        t = c.enter()
        assert t is not None
        assert not t.probe
        c.success(t)
    assert not c.is_open
    assert c.faults == 0


def test_fault_opens_then_one_probe_closes(mono: Any, caplog: pytest.LogCaptureFixture) -> None:
    c = Circuit("dep", open_seconds=1.0, monotonic=mono)
    caplog.set_level(logging.INFO, "cacheproxy.store.circuit")
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


def test_failed_probe_reopens(mono: Any) -> None:
    c = Circuit("dep", monotonic=mono)
    c.failure(None, "down")
    mono.advance(1.1)
    probe = c.enter()
    assert probe is not None
    assert probe.probe
    c.failure(probe, "still down")
    assert c.enter() is None
    mono.advance(1.1)
    assert c.enter() is not None
    assert c.episodes == 1
    assert c.faults == 2


def test_one_warning_per_episode(mono: Any, caplog: pytest.LogCaptureFixture) -> None:
    c = Circuit("dep", monotonic=mono)
    for _ in range(50):
        c.failure(None, "down")
    assert c.faults == 50
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_late_success_of_an_old_call_does_not_close(mono: Any) -> None:
    c = Circuit("dep", monotonic=mono)
    before = c.enter()
    assert before is not None
    c.failure(None, "down")
    c.success(before)  # started before the fault
    assert c.is_open


def test_abandoned_probe_lets_another_probe(mono: Any) -> None:
    c = Circuit("dep", monotonic=mono)
    c.failure(None, "down")
    mono.advance(2)
    probe = c.enter()
    assert probe is not None
    c.abandon(probe)
    assert c.enter() is not None
