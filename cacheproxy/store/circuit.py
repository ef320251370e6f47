"""A small circuit breaker for the shared tier.

Why: when Redis is down or slow, every request would otherwise pay the Redis
timeout before going upstream, and thousands of requests would hammer a
server that is trying to come back.  After a fault the circuit *opens*: calls
fail at once (the proxy goes straight upstream) for ``open_seconds``; then one
call is let through as a *probe*.  Only the probe's success closes the circuit
again, so results of calls that started before the fault cannot flap it.

Definitive faults (connection refused or reset, authentication failed) open
the circuit at once.  A *timeout* alone does not: in an asyncio process a
reply that arrived in time can still "time out" when the event loop is busy
(a burst of requests, a big response being sent), and opening the circuit
then would send a whole second of traffic upstream because the *proxy* was
busy.  So timeouts are strikes: ``strikes`` consecutive ones with no success
in between open the circuit, which a stalled server reaches within a few
requests and a loaded loop practically never does.  Each timed-out call still
fails (its request goes upstream).

Faults are counted; a warning is logged once per episode (when the circuit
opens) and an info line when it closes, never once per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

_log = logging.getLogger("cacheproxy.store.circuit")


@dataclass(slots=True, frozen=True)
class Ticket:
    """Permission to make one call; ``probe`` when it decides the circuit."""

    probe: bool


_NORMAL = Ticket(probe=False)
_PROBE = Ticket(probe=True)


class Circuit:
    """Closed -> open (fail fast) -> one probe -> closed or open again."""

    def __init__(
        self,
        name: str,
        *,
        open_seconds: float = 1.0,
        strikes: int = 3,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.open_seconds = open_seconds
        self.strikes = strikes
        self._strikes = 0
        self._now = monotonic
        self._open = False
        self._until = 0.0
        self._probing = False
        self._episode_started = 0.0
        self._episode_faults = 0
        self.faults = 0
        """Every fault seen (including ones while open)."""
        self.episodes = 0
        """How many times the circuit opened."""
        self.rejected = 0
        """Calls refused without trying while the circuit was open."""

    @property
    def is_open(self) -> bool:
        return self._open

    def enter(self) -> Ticket | None:
        """A ticket to make a call, or None: fail fast without trying."""
        if not self._open:
            return _NORMAL
        if self._probing or self._now() < self._until:
            self.rejected += 1
            return None
        self._probing = True
        return _PROBE

    def success(self, ticket: Ticket) -> None:
        self._strikes = 0
        if ticket.probe and self._open:
            _log.info(
                "%s: reachable again after %.1f s and %d fault(s)",
                self.name,
                self._now() - self._episode_started,
                self._episode_faults,
            )
            self._open = False
            self._probing = False

    def failure(self, ticket: Ticket | None, exc: BaseException | str) -> None:
        """Record a fault and open (or keep open) the circuit."""
        self.faults += 1
        now = self._now()
        if not self._open:
            self.episodes += 1
            self._episode_started = now
            self._episode_faults = 0
            _log.warning(
                "%s: unavailable (%s); skipping it for %.1f s, then probing",
                self.name,
                exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}",
                self.open_seconds,
            )
        self._episode_faults += 1
        self._strikes = 0
        self._open = True
        self._until = now + self.open_seconds
        if ticket is not None and ticket.probe:
            self._probing = False

    def timeout(self, ticket: Ticket, exc: BaseException | str) -> None:
        """A call timed out: a strike; the circuit opens after ``strikes``
        consecutive ones (at once for a probe, or when already open)."""
        self._strikes += 1
        if ticket.probe or self._open or self._strikes >= self.strikes:
            self.failure(ticket, exc)
        else:
            self.faults += 1

    def abandon(self, ticket: Ticket) -> None:
        """The call ended without telling anything (e.g. it was cancelled)."""
        if ticket.probe:
            self._probing = False
