"""The one circuit breaker, used for slurmrestd and for the Redis tier.

Why: when a dependency is down or stalled, every request would otherwise pay
its timeout, and thousands of requests would hammer a server that is trying
to come back.  After a fault the circuit *opens*: calls fail at once (the
proxy answers from what it has, or goes straight upstream) for ``cooldown``
seconds; then one call is let through as a *probe*.  Only the probe's success
closes the circuit again, so results of calls that started before the fault
cannot flap it; a failed probe re-opens it, for a cool-down doubled each time
up to ``max_cooldown`` (by default the cool-down does not grow).

Two kinds of fault, because the callers know different things:

* :meth:`CircuitBreaker.failure` is a verdict (connection refused or reset,
  authentication failed): the circuit opens at once;
* :meth:`CircuitBreaker.strike` is evidence: ``threshold`` consecutive
  strikes with no success in between open it.  A Redis *timeout* is a strike
  (in an asyncio process a reply that arrived in time can still "time out"
  when the event loop is busy; opening on one would send a whole cool-down of
  traffic upstream because the *proxy* was busy), and so is every failure of
  slurmrestd, which is opened only by a run of them.  ``threshold=0`` turns
  strikes off (the circuit never opens on them).

Faults are counted; a warning is logged once per episode (when the circuit
opens) and an info line when it closes, never once per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CircuitBreaker", "Ticket"]

_log = logging.getLogger("cacheproxy.circuit")


@dataclass(slots=True, frozen=True)
class Ticket:
    """Permission to make one call; ``probe`` when it decides the circuit."""

    probe: bool


CLOSED_TICKET = Ticket(probe=False)
"""What :meth:`CircuitBreaker.enter` hands out while the circuit is closed."""
_PROBE = Ticket(probe=True)


class CircuitBreaker:
    """Closed -> open (fail fast) -> one probe -> closed, or open again."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int = 3,
        cooldown: float = 1.0,
        max_cooldown: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        """Consecutive strikes that open the circuit (0: strikes never do)."""
        self.base_cooldown = cooldown
        self.max_cooldown = cooldown if max_cooldown is None else max(max_cooldown, cooldown)
        self._now = monotonic
        self._cooldown = cooldown
        self.is_open = False
        self._until = 0.0
        self._probing = False
        self._episode_started = 0.0
        self._episode_faults = 0
        self.consecutive = 0
        """Strikes since the last success."""
        self.faults = 0
        """Every fault seen (including ones while open)."""
        self.episodes = 0
        """How many times the circuit opened."""
        self.rejected = 0
        """Calls refused without trying while the circuit was open."""

    def enter(self) -> Ticket | None:
        """A ticket to make a call, or None: fail fast without trying."""
        if not self.is_open:
            return CLOSED_TICKET
        if self._probing or self._now() < self._until:
            self.rejected += 1
            return None
        self._probing = True
        return _PROBE

    def retry_after(self) -> float:
        """Seconds until a probe may go (the cool-down while one is out)."""
        if self._probing:
            return self._cooldown
        return max(self._until - self._now(), 0.0)

    def success(self, ticket: Ticket) -> None:
        self.consecutive = 0
        if ticket.probe and self.is_open:
            _log.info(
                "%s: reachable again after %.1f s and %d fault(s); circuit closed",
                self.name,
                self._now() - self._episode_started,
                self._episode_faults,
            )
            self.is_open = False
            self._probing = False
            self._cooldown = self.base_cooldown

    def failure(self, ticket: Ticket | None, reason: BaseException | str) -> None:
        """A definitive fault: open the circuit now (or keep it open)."""
        self.faults += 1
        self.consecutive = 0
        if ticket is not None and ticket.probe and self.is_open:
            self._episode_faults += 1
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self._until = self._now() + self._cooldown
            return
        if self.is_open:
            # A call admitted before the circuit opened: counted, but the
            # probe's time stays where the opening fault put it.
            self._episode_faults += 1
            return
        now = self._now()
        self.is_open = True
        self.episodes += 1
        self._episode_started = now
        self._episode_faults = 1
        self._until = now + self._cooldown
        _log.warning(
            "%s: unavailable (%s); failing fast for %.1f s, then probing",
            self.name,
            reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}",
            self._cooldown,
        )

    def strike(self, ticket: Ticket | None, reason: BaseException | str) -> None:
        """A fault that is evidence, not a verdict: the circuit opens after
        ``threshold`` consecutive ones (at once for a probe)."""
        if ticket is not None and ticket.probe and self.is_open:
            self.failure(ticket, reason)
            return
        if self.is_open or self.threshold <= 0:
            self.faults += 1
            if self.is_open:
                self._episode_faults += 1
            return
        self.consecutive += 1
        if self.consecutive >= self.threshold:
            self.failure(ticket, reason)
        else:
            self.faults += 1

    def abandon(self, ticket: Ticket | None) -> None:
        """The call ended without telling anything (e.g. it was cancelled)."""
        if ticket is not None and ticket.probe:
            self._probing = False
