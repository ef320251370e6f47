"""Memos bounded by the bytes they hold, not by their number of entries.

Why bytes: a memo keyed by what a client sends (a request target, a header
value) grows by whatever the client chooses to send.  Bounded by entries, 16 Ki
entries of 40 KiB targets are 645 MiB; bounded by bytes the worst case is the
bound, whatever the entries' sizes.  Least recently used entries go first
(``cachetools.LRUCache`` with a ``getsizeof``), so the hot working set of a
busy proxy stays while a flood of one-off hostile keys only evicts itself.

An entry larger than the whole bound is simply not kept (the caller computes
the value again next time: a memo is an optimisation, never the answer).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K")
V = TypeVar("V")

ENTRY_OVERHEAD = 200
"""Bytes counted for each entry besides its key and value: the dict slot,
the tuple and the objects around them (an estimate on the safe side)."""


def _size(item: tuple[object, int]) -> int:
    return item[1]


class ByteMemo(Generic[K, V]):
    """An LRU memo of at most ``max_bytes`` (as the caller sizes its entries)."""

    __slots__ = ("_cache", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cache: LRUCache[K, tuple[V, int]] = LRUCache(maxsize=max_bytes, getsizeof=_size)

    def get(self, key: K) -> V | None:
        found = self._cache.get(key)
        return None if found is None else found[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Keep ``value`` under ``key``; ``size`` is what the entry holds in
        bytes (its key and value), to which :data:`ENTRY_OVERHEAD` is added."""
        total = size + ENTRY_OVERHEAD
        if total > self.max_bytes:
            self._cache.pop(key, None)
            return
        self._cache[key] = (value, total)

    def pop(self, key: K) -> None:
        self._cache.pop(key, None)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def bytes(self) -> int:
        """The bytes the entries are counted for (never above ``max_bytes``)."""
        return int(self._cache.currsize)
