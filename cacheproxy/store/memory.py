"""The in-process store: entries in an LRU bounded in bytes, generations and
acceptances in plain dicts.

It is per process: with ``--workers N`` and no shared tier each worker has its
own cache (N times the upstream misses, and a write through one worker does
not invalidate the others — which is why several workers require Redis).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cacheproxy.store.base import Entry, Generations, Lookup

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_LIFETIME = 3600.0
"""No entry lives (fresh or stale) longer than this; it also bounds how long
an invalidated tag's generation must be remembered."""
_PRUNE_EVERY = 1024
_MAX_ACCEPTANCES = 100_000


class MemoryStore:
    """A :class:`~cacheproxy.store.base.Store` inside one process.

    ``clock`` is injected (wall-clock seconds) so TTL tests are deterministic.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_lifetime = max_lifetime
        self._clock = clock
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._bytes = 0
        self._gens: dict[str, int] = {}
        self._bumped_at: dict[str, float] = {}
        self._counter = itertools.count(1)
        self._floor = 0
        """What a tag never bumped (or forgotten) reads; raised by clear()."""
        self._bumps_since_prune = 0
        self._accepted: dict[bytes, float] = {}
        self.evictions = 0

    # -- introspection (metrics, tests) ------------------------------------
    @property
    def currsize(self) -> int:
        """Bytes currently charged."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        """The live entry under ``key`` (marked recently used), or None.

        For a tier that keeps its own freshness data in front of this store
        (:class:`~cacheproxy.store.tiered.TieredStore`): no generations or
        acceptance are looked up, and no coroutine is made.
        """
        return self._get(key)

    # -- Store protocol ----------------------------------------------------
    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        return self.lookup_now(key, tags, credential)

    def lookup_now(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        """:meth:`lookup` without a coroutine: nothing here waits, and the
        server's fast lane answers hits from a parser callback."""
        return Lookup(self._get(key), self._generations(tags), self._accepted_until(credential))

    async def generations(self, tags: Sequence[str]) -> Generations:
        return self._generations(tags)

    async def put(self, key: bytes, entry: Entry) -> bool:
        if entry.generations != self._generations(entry.tags):
            return False  # invalidated while it was being fetched
        size = entry.size
        if size > self.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        while self._entries and self._bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self.evictions += 1
        self._entries[key] = entry
        self._bytes += size
        return True

    async def remove(self, key: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size

    async def bump(self, tags: Sequence[str]) -> None:
        now = self._clock()
        for tag in tags:
            self._gens[tag] = next(self._counter)
            self._bumped_at[tag] = now
        self._bumps_since_prune += 1
        if self._bumps_since_prune >= _PRUNE_EVERY:
            self._prune_generations(now)

    async def accept(self, credential: bytes, until: float) -> None:
        if len(self._accepted) >= _MAX_ACCEPTANCES:
            self._prune_acceptances()
        self._accepted[credential] = until

    async def revoke(self, credential: bytes) -> None:
        self._accepted.pop(credential, None)

    async def acquire_lease(self, key: bytes, seconds: float) -> bool:
        return True  # one process: local coalescing already makes one fetch

    async def release_lease(self, key: bytes) -> None:
        return None

    async def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        # Every tag, bumped before or not, now reads a value no fetch in
        # flight captured, so none can land its result.
        self._floor = next(self._counter)
        self._gens.clear()
        self._bumped_at.clear()

    async def aclose(self) -> None:
        return None

    # -- internals ---------------------------------------------------------
    def _get(self, key: bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.stored_at + min(entry.ttl + entry.stale_for, self.max_lifetime):
            del self._entries[key]
            self._bytes -= entry.size
            return None
        self._entries.move_to_end(key)
        return entry

    def _generations(self, tags: Sequence[str]) -> Generations:
        gens = self._gens
        floor = self._floor
        return tuple([gens.get(t, floor) for t in tags])

    def _accepted_until(self, credential: bytes) -> float:
        until = self._accepted.get(credential, 0.0)
        if until and until <= self._clock():
            del self._accepted[credential]
            return 0.0
        return until

    def _prune_generations(self, now: float) -> None:
        """Forget generations bumped longer ago than any entry can live.

        An entry captured before such a bump has expired by now, so reading the
        tag as the floor again cannot revive it; an entry captured after it holds a
        non-zero generation and merely misses once.
        """
        self._bumps_since_prune = 0
        horizon = now - self.max_lifetime
        for tag in [t for t, at in self._bumped_at.items() if at < horizon]:
            del self._gens[tag]
            del self._bumped_at[tag]

    def _prune_acceptances(self) -> None:
        now = self._clock()
        for cred in [c for c, until in self._accepted.items() if until <= now]:
            del self._accepted[cred]
        while len(self._accepted) >= _MAX_ACCEPTANCES:
            del self._accepted[next(iter(self._accepted))]
