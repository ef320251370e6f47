"""An injected wall clock: TTL tests move time instead of sleeping (the
cachetools ``timer=`` idea), shared by every test folder."""

from __future__ import annotations


class Clock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
