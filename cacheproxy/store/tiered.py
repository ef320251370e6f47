"""An in-process tier in front of the shared one, for hot entries.

Why it never weakens freshness: a local copy is served only when Redis, in
the one round trip that also fetches the tags' generations and the
credential's acceptance, confirms that the entry it stores under the key is
still *the very same one* (same epoch, same entry id).  A bump, a removal, a
clear, a newer store by another replica, an eviction or a Redis restart all
make the local copy unservable at once.  So a local hit saves the body
transfer and its decoding, not the round trip; a miss, or a local copy that
turned out stale, costs the usual full lookup (two round trips in the latter
case, which only happens after the entry changed).

When Redis is unreachable nothing local is served by default
(``outage_grace=0``): freshness cannot be established.  With a positive
``outage_grace`` a local copy may be served for that many seconds after the
last successful Redis call, provided its generations and the credential's
acceptance are exactly what Redis said last and this replica did not bump
its tags since.  That is a bounded, documented weakening: a write through
*another* replica during those seconds is not seen.

The ``local`` store must be dedicated to this tier: it is used only as a
byte-bounded LRU of copies (:meth:`MemoryStore.get` and
:meth:`MemoryStore.keep`), each copy carrying the shared tier's
:attr:`Entry.version` of the bytes it was made from.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Protocol

from cacheproxy.store.base import Entry, Generations, Lookup, StoreError
from cacheproxy.store.memory import MemoryStore

__all__ = ["SharedTier", "TieredStore"]

_MAX_SEEN = 65_536


class SharedTier(Protocol):
    """What the tiered store needs from the shared tier (RedisStore has it)."""

    async def lookup_versioned(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> tuple[Lookup, bytes | None]: ...

    def probe(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> Awaitable[tuple[bytes | None, Generations, float]]: ...

    async def generations(self, tags: Sequence[str]) -> Generations: ...

    async def put_versioned(self, key: bytes, entry: Entry) -> bytes | None: ...

    async def remove(self, key: bytes) -> None: ...

    async def bump(self, tags: Sequence[str]) -> None: ...

    async def accept(self, credential: bytes, until: float) -> None: ...

    async def revoke(self, credential: bytes) -> None: ...

    async def acquire_lease(self, key: bytes, seconds: float) -> bool: ...

    async def release_lease(self, key: bytes) -> None: ...

    async def clear(self) -> None: ...

    async def aclose(self) -> None: ...


class TieredStore:
    """A :class:`~cacheproxy.store.base.Store`: a local LRU of bodies in front
    of a shared tier that stays the only authority on freshness."""

    def __init__(
        self,
        *,
        local: MemoryStore,
        shared: SharedTier,
        outage_grace: float = 0.0,
        local_max_entry_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self.shared = shared
        self.outage_grace = outage_grace
        self.local_max_entry_bytes = (
            local.max_bytes // 8 if local_max_entry_bytes is None else local_max_entry_bytes
        )
        self._clock = clock
        self._mono = monotonic
        self._last_ok = float("-inf")
        self._seen_gens: dict[str, int] = {}
        self._seen_acc: dict[bytes, float] = {}
        self._bumped_at: dict[str, float] = {}
        self.local_hits = 0
        """Lookups answered with the local copy (no body transferred)."""
        self.local_stale = 0
        """Local copies found replaced or invalidated in Redis."""
        self.outage_hits = 0
        """Local copies served during an outage, within ``outage_grace``."""

    # -- Store protocol ----------------------------------------------------
    async def lookup(self, key: bytes, tags: Sequence[str], credential: bytes) -> Lookup:
        # What _observe records serves only the outage grace: no clock reads
        # on the hit path without it.
        started = self._mono() if self.outage_grace > 0 else 0.0
        entry = self.local.get(key)
        if entry is not None:
            version = entry.version
            try:
                current, gens, accepted = await self.shared.probe(key, tags, credential)
            except StoreError:
                return self._outage_lookup(entry, tags, credential)
            if self.outage_grace > 0:  # else it records nothing: no calls per hit
                self._observe(started, tags, gens, credential, accepted)
            if current == version:
                self.local_hits += 1
                return Lookup(entry, gens, accepted)
            self.local_stale += 1
            await self.local.remove(key)
            if current is None:
                return Lookup(None, gens, accepted)
        found, stored = await self.shared.lookup_versioned(key, tags, credential)
        self._observe(started, tags, found.generations, credential, found.accepted_until)
        got = found.entry
        if (
            got is not None
            and stored is not None
            and got.is_valid(tags, found.generations)
            and got.size <= self.local_max_entry_bytes
        ):
            self.local.keep(key, replace(got, version=stored))
        return found

    async def generations(self, tags: Sequence[str]) -> Generations:
        started = self._mono()
        gens = await self.shared.generations(tags)
        self._note_ok()
        self._remember_gens(started, tags, gens)
        return gens

    async def put(self, key: bytes, entry: Entry) -> bool:
        version = await self.shared.put_versioned(key, entry)
        self._note_ok()
        if version is not None and entry.size <= self.local_max_entry_bytes:
            self.local.keep(key, replace(entry, version=version))
        return version is not None

    async def remove(self, key: bytes) -> None:
        await self.local.remove(key)
        await self.shared.remove(key)

    async def bump(self, tags: Sequence[str]) -> None:
        # Forget first: even if the shared bump fails, this replica must not
        # serve those tags from its local copies during an outage (nor let a
        # lookup that started before the bump teach it the old value again).
        if self.outage_grace > 0:
            now = self._mono()
            if len(self._bumped_at) >= _MAX_SEEN:
                self._bumped_at.clear()
                self._seen_gens.clear()
            for tag in tags:
                self._seen_gens.pop(tag, None)
                self._bumped_at[tag] = now
        await self.shared.bump(tags)
        self._note_ok()

    async def accept(self, credential: bytes, until: float) -> None:
        await self.shared.accept(credential, until)
        self._note_ok()
        self._remember_acc(credential, until)

    async def revoke(self, credential: bytes) -> None:
        self._seen_acc.pop(credential, None)
        await self.shared.revoke(credential)

    async def acquire_lease(self, key: bytes, seconds: float) -> bool:
        return await self.shared.acquire_lease(key, seconds)

    async def release_lease(self, key: bytes) -> None:
        await self.shared.release_lease(key)

    async def clear(self) -> None:
        self._seen_gens.clear()
        self._seen_acc.clear()
        await self.local.clear()
        await self.shared.clear()

    async def aclose(self) -> None:
        await self.shared.aclose()
        await self.local.aclose()

    # -- internals ---------------------------------------------------------
    def _outage_lookup(self, entry: Entry, tags: Sequence[str], credential: bytes) -> Lookup:
        """Serve the local copy only within the grace, exactly as last seen."""
        if self.outage_grace <= 0 or self._mono() - self._last_ok > self.outage_grace:
            raise StoreError("shared tier unavailable; local copy not servable")
        if entry.tags != tuple(tags):
            raise StoreError("shared tier unavailable")
        for tag, gen in zip(entry.tags, entry.generations, strict=True):
            if self._seen_gens.get(tag) != gen:
                raise StoreError("shared tier unavailable; local copy not confirmed")
        accepted = self._seen_acc.get(credential, 0.0)
        if accepted <= self._clock():
            accepted = 0.0
        self.outage_hits += 1
        return Lookup(entry, entry.generations, accepted)

    def _observe(
        self,
        started: float,
        tags: Sequence[str],
        gens: Generations,
        credential: bytes,
        accepted: float,
    ) -> None:
        self._note_ok()
        self._remember_gens(started, tags, gens)
        if accepted:
            self._remember_acc(credential, accepted)
        else:
            self._seen_acc.pop(credential, None)

    def _note_ok(self) -> None:
        if self.outage_grace > 0:
            self._last_ok = self._mono()

    def _remember_gens(self, started: float, tags: Sequence[str], gens: Generations) -> None:
        if self.outage_grace <= 0:
            return
        if len(self._seen_gens) >= _MAX_SEEN:
            self._seen_gens.clear()
        for tag, gen in zip(tags, gens, strict=True):
            if self._bumped_at.get(tag, float("-inf")) < started:
                self._seen_gens[tag] = gen

    def _remember_acc(self, credential: bytes, until: float) -> None:
        if self.outage_grace <= 0:
            return
        if len(self._seen_acc) >= _MAX_SEEN:
            self._seen_acc.clear()
        self._seen_acc[credential] = until
