"""Memos bounded by the bytes they hold, not by their number of entries.

Why bytes: a memo keyed by what a client sends (a request target, a header
value) grows by whatever the client chooses to send.  Bounded by entries, 16 Ki
entries of 40 KiB targets are 645 MiB; bounded by bytes the worst case is the
bound, whatever the entries' sizes.  Least recently used entries go first, so
the hot working set of a busy proxy stays while a flood of one-off hostile
keys only evicts itself.

An entry larger than the whole bound is simply not kept (the caller computes
the value again next time: a memo is an optimisation, never the answer).

Why not ``cachetools.LRUCache`` (the in-process store's): a memo is read up
to three times on every cache hit, and a read through ``LRUCache`` runs four
Python-level calls (``get``, ``__contains__``, ``__getitem__``, the recency
update), measured at about 2.5k instructions each.  Here a read is one
``OrderedDict`` lookup and one ``move_to_end``, both in C (about a fifth of
that), and the byte count is kept beside it: exact LRU order, exact bound.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

ENTRY_OVERHEAD = 200
"""Bytes counted for each entry besides its key and value: the dict slot,
the tuple and the objects around them (an estimate on the safe side)."""


class ByteMemo(Generic[K, V]):
    """An LRU memo of at most ``max_bytes`` (as the caller sizes its entries)."""

    __slots__ = ("_entries", "bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        """The bytes the entries are counted for (never above ``max_bytes``)."""
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        """key -> (value, bytes counted), least recently used first."""

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Keep ``value`` under ``key``; ``size`` is what the entry holds in
        bytes (its key and value), to which :data:`ENTRY_OVERHEAD` is added.
        The least recently used entries go until it fits."""
        self.pop(key)
        total = size + ENTRY_OVERHEAD
        if total > self.max_bytes:
            return
        entries = self._entries
        self.bytes += total
        while self.bytes > self.max_bytes:
            _, (_, dropped) = entries.popitem(last=False)
            self.bytes -= dropped
        entries[key] = (value, total)

    def pop(self, key: K) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[1]

    def __len__(self) -> int:
        return len(self._entries)
