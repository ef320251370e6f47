"""What the operations side may know of the proxy: one small interface.

The endpoints, the admin API, readiness and the metrics read a
:class:`Report` and nothing else, so they never reach into the proxy's
store, transport or coalescer, and the request path can change its insides
without breaking a status page.  The one implementation is
:class:`cacheproxy.ops.adapter.AppReport`; tests may pass any object of
this shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict

from cacheproxy.stats import Stats


class StoreState(TypedDict, total=False):
    """Sizes and counters of the cache store that are cheap to read; a key is
    missing when the configured store has no such thing."""

    entries: int
    """Entries in the in-process cache."""
    bytes: int
    """Bytes held by the in-process cache."""
    max_bytes: int
    """Bound of the in-process cache, bytes."""
    evictions: int
    """Entries evicted from the in-process cache to stay within its bound."""
    local_hits: int
    """Tiered store: lookups answered with the local copy."""
    local_stale: int
    """Tiered store: local copies found outdated by the shared tier."""
    outage_hits: int
    """Tiered store: local copies served while the shared tier was down."""
    shared_circuit_open: int
    """1 while the shared tier (Redis) is skipped after failures."""
    shared_faults: int
    """Failures the shared tier's circuit has counted."""


class TransportState(TypedDict, total=False):
    """The upstream protection's state; empty without protection."""

    in_flight: int
    queued: int
    max_in_flight: int
    circuit_open: int
    circuit_opened: int


@dataclass(frozen=True, slots=True)
class RuleSummary:
    """A rule as the admin API and the status page name it."""

    name: str
    path: str
    ttl: float
    cache: bool
    """The rule caches (a write or pass-through rule does not)."""
    tags: tuple[str, ...]
    """Tags as written in the rules (``jobs``, ``job:{job_id:base}``)."""


class StoreUnavailable(Exception):
    """The store refused a purge (its message says why)."""


class Report(Protocol):
    """The proxy as the operations side sees it.

    Reads are cheap and synchronous (a scrape or a status page calls them on
    the event loop); the probes and the purge are the only coroutines.
    """

    @property
    def stats(self) -> Stats:
        """The hot path's counters (read only, on the event loop)."""
        ...

    @property
    def started(self) -> bool:
        """The proxy is serving (between the lifespan's startup and shutdown)."""
        ...

    @property
    def admin_token(self) -> str:
        """The admin API's bearer token; empty: the admin API is off."""
        ...

    def settings_summary(self) -> Mapping[str, object]:
        """The settings, secrets masked."""
        ...

    def store_state(self) -> StoreState: ...

    def transport_state(self) -> TransportState: ...

    def fetches_in_flight(self) -> int:
        """Distinct (coalesced) fetches from slurmrestd in progress."""
        ...

    def rules(self) -> Sequence[RuleSummary]: ...

    def scopes(self) -> Mapping[str, object]:
        """The cached routes' scopes now (docs/scopes.md): ``shared`` and
        ``user`` counts, ``demoted`` routes, the ``PrivateData`` words of the
        ``setting`` and of ``slurm_conf``, and ``routes`` (each one's
        ``route``, ``scope`` and ``why``); empty before the proxy starts."""
        ...

    @property
    def shared_store(self) -> bool:
        """A shared tier exists: a purge reaches every replica."""
        ...

    @property
    def all_tag(self) -> str:
        """The tag every entry carries (a purge of everything)."""
        ...

    @property
    def user_purge(self) -> bool:
        """Entries carry a per-user tag (:meth:`user_tag` answers)."""
        ...

    def user_tag(self, user: str) -> str | None:
        """The tag of every entry cached for ``user``; None if entries carry no
        per-user tag."""
        ...

    async def purge(self, tags: Sequence[str]) -> None:
        """Invalidate ``tags`` (a generation bump, as a write does); raises
        :class:`StoreUnavailable`."""
        ...

    async def probe_upstream(self) -> int:
        """Ask slurmrestd something cheap; its HTTP status.  Raises on any
        failure to get an answer (the readiness check words it)."""
        ...

    async def probe_store(self) -> bool | None:
        """Does the shared tier answer?  None when there is no shared tier."""
        ...
