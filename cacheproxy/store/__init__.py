"""Cache stores: in-process (:mod:`.memory`) and shared on Redis (:mod:`.redis`)."""

from cacheproxy.store.base import Entry, Generations, Lookup, Store, StoreError

__all__ = ["Entry", "Generations", "Lookup", "Store", "StoreError"]
