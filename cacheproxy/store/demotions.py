"""Routes the audit of shared views demoted, shared by replicas through Redis
(:mod:`cacheproxy.http.audit` decides; this only stores and reads).

One Redis set per ``PrivateData`` as the replicas were told it: an operator
who corrects the setting starts with a clean slate, while a replica
restarted with the same wrong setting learns at once what its peers found.
It goes through the store's own Redis link (its pools, timeout and circuit):
a Redis fault is a :class:`~cacheproxy.store.base.StoreError` the caller
logs and survives, never a failed request.
"""

from __future__ import annotations

from typing import Protocol

from cacheproxy.store.redis import RedisStore
from cacheproxy.store.resp import pack


class DemotionBoard(Protocol):
    """Where replicas publish and read demoted routes."""

    async def add(self, setting: str, route: str) -> None: ...

    async def routes(self, setting: str) -> frozenset[str]: ...


class RedisDemotions:
    """The board on a :class:`RedisStore`'s link: ``<prefix>demoted:<setting>``."""

    def __init__(self, store: RedisStore) -> None:
        self._link = store.link
        self._prefix = store.prefix.encode()

    def key(self, setting: str) -> bytes:
        return self._prefix + b"demoted:" + setting.encode()

    async def add(self, setting: str, route: str) -> None:
        link = self._link
        await link.call(link.writes, pack([b"SADD", self.key(setting), route.encode()]), 1)

    async def routes(self, setting: str) -> frozenset[str]:
        link = self._link
        (members,) = await link.call(link.reads, pack([b"SMEMBERS", self.key(setting)]), 1)
        return frozenset(m.decode("utf-8", "replace") for m in members or ())


def board_for(store: object) -> DemotionBoard | None:
    """The board of a store shared by replicas (Redis, alone or behind a
    local tier); None for an in-process store (nothing to share)."""
    shared = getattr(store, "shared", store)
    return RedisDemotions(shared) if isinstance(shared, RedisStore) else None
