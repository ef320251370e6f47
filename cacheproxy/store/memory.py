"""The in-process store: entries in a ``cachetools`` cache bounded in bytes,
generations and acceptances beside it.

It is per process: with ``--workers N`` and no shared tier each worker has its
own cache (N times the upstream misses, and a write through one worker does
not invalidate the others — which is why several workers require Redis).

What is a cache and what is not: entries may be dropped at any time (a
dropped entry is a miss), so they live in a ``cachetools.LRUCache`` bounded by
their bytes (``getsizeof``); an entry past its lifetime is dropped when next
read, by the injected clock.  (``cachetools.TLRUCache`` would also drop
expired entries before evicting live ones, but its read costs two more
Python calls, about 1k instructions of every hit.)  Tag generations are *not* a cache: forgetting
a bumped generation early would make entries captured before the bump valid
again, so they are a plain dict, pruned only once every entry that could have
seen an older value has expired.  Acceptances are a plain dict too, pruned
when it reaches its bound: a hit reads one, and a dict read with an expiry
comparison costs a third of a ``TLRUCache`` read (measured: 2.5k of the
instructions of an in-process hit).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from cachetools import LRUCache

from cacheproxy.store.base import Entry, Generations, Lookup

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_LIFETIME = 3600.0
"""No entry lives (fresh or stale) longer than this; it also bounds how long
an invalidated tag's generation must be remembered."""
_PRUNE_EVERY = 1024
_MAX_READS = 4096
_MAX_ACCEPTANCES = 100_000


class _Entries(LRUCache[bytes, Entry]):
    """Entries bounded by :attr:`Entry.size`; counts what it had to evict."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, _size)
        self.evictions = 0

    def popitem(self) -> tuple[bytes, Entry]:
        # cachetools' documented hook for eviction
        item = super().popitem()
        self.evictions += 1
        return item


def _size(entry: Entry) -> int:
    return entry.size


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
        self._entries = _Entries(max_bytes)
        self._gens: dict[str, int] = {}
        self._bumped_at: dict[str, float] = {}
        self._counter = itertools.count(1)
        self._floor = 0
        """What a tag never bumped (or forgotten) reads; raised by clear()."""
        self._bumps_since_prune = 0
        self._accepted: dict[bytes, float] = {}
        self._read: dict[tuple[str, ...], Generations] = {}
        """tags -> their generations as last read: one dict read per hit
        instead of one per tag.  Emptied by every change of a generation
        (:meth:`bump`, :meth:`clear`, pruning), so it never holds a value
        that is no longer current."""

    # -- introspection (metrics, tests) ------------------------------------
    @property
    def currsize(self) -> int:
        """Bytes currently charged."""
        return int(self._entries.currsize)

    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
        return self._entries.evictions

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        """The live entry under ``key`` (marked recently used), or None.

        For a tier that keeps its own freshness data in front of this store
        (:class:`~cacheproxy.store.tiered.TieredStore`): no generations or
        acceptance are looked up, and no coroutine is made.
        """
        return self._get(key, self._clock())

    def _get(self, key: bytes, now: float) -> Entry | None:
        entries = self._entries
        try:
            entry = entries[key]
        except KeyError:
            return None
        life = entry.ttl + entry.stale_for  # (no min(): a builtin call per hit)
        if life > self.max_lifetime:
            life = self.max_lifetime
        if now >= entry.stored_at + life:
            del entries[key]
            return None
        return entry

    def keep(self, key: bytes, entry: Entry) -> bool:
        """Hold ``entry`` under ``key`` with no generation check: for a tier
        that decides freshness itself (the local copies of
        :class:`~cacheproxy.store.tiered.TieredStore`).  True when held."""
        if entry.size > self.max_bytes:
            self._entries.pop(key, None)
            return False
        self._entries[key] = entry
        return True

    # -- Store protocol ----------------------------------------------------
    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        return self.lookup_now(key, tags, credential)

    def lookup_now(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        """:meth:`lookup` without a coroutine: nothing here waits, and the
        server's fast lane answers hits from a parser callback."""
        now = self._clock()  # (read once: a clock read per use was a hit's 0.4k)
        entry = self._get(key, now)
        accepted = self._accepted.get(credential, 0.0)
        if accepted and accepted <= now:
            del self._accepted[credential]
            accepted = 0.0
        return Lookup(entry, self._generations(tags), accepted)

    async def generations(self, tags: Sequence[str]) -> Generations:
        return self._generations(tags)

    async def put(self, key: bytes, entry: Entry) -> bool:
        if entry.generations != self._generations(entry.tags):
            return False  # invalidated while it was being fetched
        return self.keep(key, entry)

    async def remove(self, key: bytes) -> None:
        self._entries.pop(key, None)

    async def bump(self, tags: Sequence[str]) -> None:
        now = self._clock()
        self._read.clear()
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
        # Every tag, bumped before or not, now reads a value no fetch in
        # flight captured, so none can land its result.
        self._floor = next(self._counter)
        self._gens.clear()
        self._read.clear()
        self._bumped_at.clear()

    async def aclose(self) -> None:
        return None

    # -- internals ---------------------------------------------------------
    def _generations(self, tags: Sequence[str]) -> Generations:
        key = tuple(tags)  # (the very tuple when given one)
        found = self._read.get(key)
        if found is None:
            gens = self._gens
            floor = self._floor
            found = tuple([gens.get(t, floor) for t in key])
            if len(self._read) >= _MAX_READS:
                self._read.clear()
            self._read[key] = found
        return found

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
            self._read.clear()

    def _prune_acceptances(self) -> None:
        now = self._clock()
        for cred in [c for c, until in self._accepted.items() if until <= now]:
            del self._accepted[cred]
        while len(self._accepted) >= _MAX_ACCEPTANCES:
            del self._accepted[next(iter(self._accepted))]
