"""What a cache store holds and the small interface every store implements.

A store keeps three kinds of state, all of which a shared tier must share:

* **entries**: a stored upstream response under an opaque key;
* **tag generations**: one opaque value per tag, changed by every write that
  invalidates the tag (and by eviction or a restart of a shared store);
  values are only ever compared for equality.  An entry remembers the
  generations of its tags as they were when its fetch *started*; it is valid
  only while they are unchanged.
  That makes invalidation O(1) and closes the race where a fetch that began
  before a write finishes after it;
* **credential acceptances**: the keyed hash of a (user, token) pair that
  slurmrestd answered with a 2xx, until when it may be trusted.

The proxy needs one round trip on the hit path, so :meth:`Store.lookup`
returns the entry, the current generations of the rule's tags and the
credential's acceptance together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cacheproxy.upstream.base import Headers

Generations = tuple[int, ...]


@dataclass(slots=True, frozen=True)
class Entry:
    """A stored 200 response, as bytes: nothing is parsed on the hit path."""

    status: int
    headers: Headers
    """End-to-end headers as upstream sent them (hop-by-hop ones removed)."""
    body: bytes
    stored_at: float
    """Wall-clock seconds when upstream's answer arrived (for Age and TTL)."""
    ttl: float
    tags: tuple[str, ...]
    generations: Generations
    """Generations of ``tags`` captured when the fetch started."""
    stale_for: float = 0.0
    """Seconds past ``ttl`` the entry is kept: to be served stale on upstream
    errors (per rule) or revalidated cheaply with ``update_time``."""
    variants: tuple[tuple[bytes, bytes], ...] = ()
    """Compressed copies of ``body``, made once when stored:
    ``((b"gzip", ...), (b"zstd", ...))``.  Stores must keep them."""
    origin: float = 0.0
    """Wall-clock seconds when the upstream request was sent: the data is at
    least this recent (what an ``update_time`` revalidation asks from)."""
    splice: tuple[int, int] | None = None
    """A shared entry's ``meta.client.source`` (its JSON string's byte range
    in ``body``), replaced by each requester's own when served
    (:mod:`cacheproxy.core.splice`); None: served as stored."""
    version: bytes = field(default=b"", compare=False)
    """Which stored copy this is in a shared store (Redis: epoch + entry id),
    so that a local tier can ask whether its copy is still *the very same*
    one; empty elsewhere.  Not part of the entry's value (not compared, not
    encoded)."""

    @property
    def size(self) -> int:
        """Bytes charged against the store's bound."""
        return (
            len(self.body)
            + sum(len(v) for _, v in self.variants)
            + sum(len(k) + len(v) for k, v in self.headers)
            + 128
        )

    def expires_at(self) -> float:
        return self.stored_at + self.ttl

    def is_fresh(self, now: float) -> bool:
        return now < self.stored_at + self.ttl

    def is_valid(self, tags: Sequence[str], generations: Generations) -> bool:
        """True when no write has invalidated the entry since its fetch began."""
        return self.generations == generations and self.tags == tuple(tags)


@dataclass(slots=True)
class Lookup:
    """What the hit path needs, fetched together.  (Built per hit: neither a
    NamedTuple nor frozen, whose construction costs more than the rest of
    the in-process store's read.)"""

    entry: Entry | None
    generations: Generations
    accepted_until: float
    """Until when the credential is trusted (0.0: never accepted)."""


class StoreError(Exception):
    """The store could not answer (e.g. Redis down or slow).

    The proxy treats it as a miss and goes upstream: a store fault must never
    be the reason a request fails.
    """


class Store(Protocol):
    """Entries, tag generations and credential acceptances."""

    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        """The entry under ``key``, the current generations of ``tags`` and
        until when ``credential`` is accepted, in one round trip."""
        ...

    async def generations(self, tags: Sequence[str]) -> Generations:
        """Current generations of ``tags``, in order (opaque: equal until a bump)."""
        ...

    async def put(self, key: bytes, entry: Entry) -> bool:
        """Store ``entry`` unless a tag was bumped since its generations were
        captured (a store may also refuse it for size).  True when stored:
        ``Cache-Status`` says ``stored`` only then."""
        ...

    async def remove(self, key: bytes) -> None: ...

    async def bump(self, tags: Sequence[str]) -> None:
        """Invalidate every entry carrying any of ``tags``.  Must be done, on
        every replica's view, when this returns (read-your-writes)."""
        ...

    async def accept(self, credential: bytes, until: float) -> None:
        """Record that slurmrestd accepted ``credential``, trusted until ``until``."""
        ...

    async def revoke(self, credential: bytes) -> None:
        """Forget an acceptance (slurmrestd refused the credential)."""
        ...

    async def acquire_lease(self, key: bytes, seconds: float) -> bool:
        """Ask to be the one replica fetching ``key`` for the next ``seconds``.

        False means another replica holds the lease: the caller waits (bounded)
        for the entry to appear via :meth:`lookup`, then fetches itself.  A
        store with a single process behind it always answers True.
        """
        ...

    async def release_lease(self, key: bytes) -> None: ...

    async def clear(self) -> None:
        """Drop every entry (generations are bumped so nothing in flight lands)."""
        ...

    async def aclose(self) -> None: ...


class SyncLookup(Protocol):
    """Optional: a store whose :meth:`Store.lookup` never waits may also offer
    it as a plain call.  It must answer exactly what ``lookup`` would (a
    subclass overriding one overrides both); the server's fast lane
    (:mod:`cacheproxy.http.server`) answers hits with it from a parser callback,
    without a coroutine."""

    def lookup_now(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup: ...
