"""A connection's two deadlines on one timer: the request head's and the
idle keep-alive's (a part of :class:`cacheproxy.http.server.HttpServer`).

* head: a head not complete ``head_timeout`` seconds after the connection
  opened or the previous response ended is answered 408 (a silent close if
  not a byte of it came);
* idle: a connection with no request ``timeout_keep_alive`` seconds after its
  last response closes silently, like uvicorn's keep-alive expiry.

One timer per connection serves both (one timer per request cost a tenth of
the hit path): moving a deadline is setting a float, and the timer is moved
only when a deadline comes nearer; when it fires early it re-arms itself for
the next.  While a request is being answered neither applies (the server
re-arms them once its response is done).
"""

from __future__ import annotations

import asyncio

NEVER = float("inf")


class Deadlines:
    """The deadline half of a connection (a mixin of the server protocol).

    The connection provides ``loop``, ``transport``, ``active`` (the request
    being answered, or None), ``in_head`` (a head is being parsed),
    ``head_timeout`` (seconds; 0: none) and :meth:`head_timed_out`; it sets
    :attr:`head_deadline` and :attr:`idle_deadline` and calls
    :meth:`ensure_timer` when it moves them nearer."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    active: object | None
    in_head: bool
    head_timeout: float

    def init_deadlines(self) -> None:
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = NEVER
        self.head_deadline = NEVER
        self.idle_deadline = NEVER

    def head_timed_out(self) -> None:
        """Answer 408 and close (the server's)."""
        raise NotImplementedError

    def arm_head_deadline(self) -> None:
        if self.head_timeout > 0:
            self.head_deadline = self.loop.time() + self.head_timeout
            self.ensure_timer()

    def ensure_timer(self) -> None:
        """One timer per connection, at the earliest deadline (see the module docstring)."""
        deadline = min(self.head_deadline, self.idle_deadline)
        if deadline == NEVER:
            return
        if self.timer is not None:
            if self.timer_at <= deadline:
                return
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._on_deadline)

    def stop_timer(self) -> None:
        """The connection is gone."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_deadline(self) -> None:
        self.timer = None
        if self.transport.is_closing() or self.active is not None:
            return  # a request is being answered: the server re-arms after it
        now = self.loop.time()
        if self.in_head:
            if self.head_deadline <= now:
                self.head_timed_out()
                return
        elif min(self.head_deadline, self.idle_deadline) <= now:
            self.transport.close()  # idle: a silent close, as a keep-alive expiry
            return
        self.ensure_timer()
