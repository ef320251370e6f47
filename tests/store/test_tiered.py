"""The local tier: saves body transfers, never freshness."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from cacheproxy.store.base import Entry, Lookup, StoreError
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore
from cacheproxy.store.tiered import TieredStore

TAGS = ("jobs",)
CRED = b"\x09" * 32


class CountingRedis(RedisStore):
    """Counts full lookups (body transferred) and probes (no body)."""

    full = 0
    probes = 0

    async def lookup_versioned(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> tuple[Lookup, bytes | None]:
        self.full += 1
        return await super().lookup_versioned(key, tags, credential)

    async def probe(
        self, key: bytes, tags: Sequence[str], credential: bytes
    ) -> tuple[bytes | None, tuple[int, ...], float]:
        self.probes += 1
        return await super().probe(key, tags, credential)


def entry(
    now: float, gens: tuple[int, ...], body: bytes = b"[1, 2, 3]", tags: tuple[str, ...] = TAGS
) -> Entry:
    return Entry(200, [(b"content-type", b"application/json")], body, now, 30.0, tags, gens)


@pytest.fixture
async def shared(
    redis_server: Any, prefix: str, clock: Any, mono: Any
) -> AsyncIterator[CountingRedis]:
    s = CountingRedis(redis_server.url, prefix=prefix, clock=clock, timeout=1.0, monotonic=mono)
    yield s
    await s.aclose()


@pytest.fixture
def tiered(shared: CountingRedis, clock: Any, mono: Any) -> TieredStore:
    return TieredStore(local=MemoryStore(clock=clock), shared=shared, clock=clock, monotonic=mono)


@pytest.fixture
async def other(redis_server: Any, prefix: str, clock: Any) -> AsyncIterator[RedisStore]:
    """Another replica, straight on Redis."""
    s = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
    yield s
    await s.aclose()


async def test_a_local_hit_transfers_no_body(
    tiered: TieredStore, shared: CountingRedis, clock: Any
) -> None:
    gens = await tiered.generations(TAGS)
    e = entry(clock(), gens, body=b"x" * 100_000)
    await tiered.put(b"k", e)
    for _ in range(5):
        found = await tiered.lookup(b"k", TAGS, CRED)
        assert found.entry == e
    assert shared.full == 0
    assert shared.probes == 5
    assert tiered.local_hits == 5


async def test_local_copies_are_kept_again_after_a_clear(
    tiered: TieredStore, shared: CountingRedis, clock: Any
) -> None:
    """clear() raises the local store's floor: copies stored after it must
    still be accepted locally, or every later hit transfers the body."""
    await tiered.clear()
    e = entry(clock(), await tiered.generations(TAGS))
    await tiered.put(b"k", e)
    for _ in range(3):
        assert (await tiered.lookup(b"k", TAGS, CRED)).entry == e
    assert shared.full == 0
    assert tiered.local_hits == 3


async def test_a_local_hit_returns_the_stored_entry_itself(tiered: TieredStore, clock: Any) -> None:
    """The local copy carries its real tags and generations: nothing is
    parsed or rebuilt per hit (the copy, the entry with its Redis version, is
    made once when stored)."""
    e = entry(clock(), await tiered.generations(TAGS))
    await tiered.put(b"k", e)
    first = (await tiered.lookup(b"k", TAGS, CRED)).entry
    second = (await tiered.lookup(b"k", TAGS, CRED)).entry
    assert first == e
    assert second is first
    assert tiered.local_hits == 2


async def test_an_entry_stored_by_another_replica_is_fetched_once(
    tiered: TieredStore, shared: CountingRedis, other: RedisStore, clock: Any
) -> None:
    await other.put(b"k", entry(clock(), await other.generations(TAGS)))
    for _ in range(3):
        assert (await tiered.lookup(b"k", TAGS, CRED)).entry is not None
    assert shared.full == 1
    assert tiered.local_hits == 2


async def test_a_newer_entry_from_another_replica_replaces_the_local_copy(
    tiered: TieredStore, other: RedisStore, clock: Any
) -> None:
    gens = await tiered.generations(TAGS)
    await tiered.put(b"k", entry(clock(), gens, body=b"old"))
    await other.put(b"k", entry(clock(), gens, body=b"new"))
    found = (await tiered.lookup(b"k", TAGS, CRED)).entry
    assert found is not None
    assert found.body == b"new"
    assert tiered.local_stale == 1


@pytest.mark.parametrize("change", ["bump", "remove", "clear", "epoch-lost"])
async def test_any_change_in_redis_makes_the_local_copy_unservable(
    tiered: TieredStore, other: RedisStore, redis_server: Any, prefix: str, clock: Any, change: str
) -> None:
    gens = await tiered.generations(TAGS)
    await tiered.put(b"k", entry(clock(), gens))
    await tiered.put(b"u", entry(clock(), (), tags=()))
    assert (await tiered.lookup(b"k", TAGS, CRED)).entry is not None
    if change == "bump":
        await other.bump(TAGS)
    elif change == "remove":
        await other.remove(b"k")
        await other.remove(b"u")
    elif change == "clear":
        await other.clear()
    else:
        redis_server.command("DEL", f"{prefix}epoch")
    found = await tiered.lookup(b"k", TAGS, CRED)
    assert found.entry is None or not found.entry.is_valid(TAGS, found.generations)
    if change != "bump":
        assert (await tiered.lookup(b"u", (), CRED)).entry is None


async def test_acceptance_always_comes_from_redis(
    tiered: TieredStore, other: RedisStore, clock: Any
) -> None:
    gens = await tiered.generations(TAGS)
    await tiered.put(b"k", entry(clock(), gens))
    await other.accept(CRED, clock() + 10)
    assert (await tiered.lookup(b"k", TAGS, CRED)).accepted_until == clock() + 10
    await other.revoke(CRED)
    assert (await tiered.lookup(b"k", TAGS, CRED)).accepted_until == 0.0


async def test_entries_above_the_local_bound_stay_in_redis_only(
    shared: CountingRedis, clock: Any, mono: Any
) -> None:
    tiered = TieredStore(
        local=MemoryStore(clock=clock), shared=shared, clock=clock, local_max_entry_bytes=1000
    )
    await tiered.put(b"k", entry(clock(), await tiered.generations(TAGS), body=b"x" * 5000))
    assert (await tiered.lookup(b"k", TAGS, CRED)).entry is not None
    assert (await tiered.lookup(b"k", TAGS, CRED)).entry is not None
    assert shared.full == 2
    assert tiered.local_hits == 0


# -- outages -------------------------------------------------------------------
@pytest.fixture
async def linked(faulty_link: Any, prefix: str, clock: Any, mono: Any) -> AsyncIterator[RedisStore]:
    s = RedisStore(faulty_link.url, prefix=prefix, clock=clock, timeout=0.2, monotonic=mono)
    yield s
    await s.aclose()


async def test_no_local_copy_is_served_while_redis_is_away_by_default(
    linked: RedisStore, faulty_link: Any, clock: Any, mono: Any
) -> None:
    tiered = TieredStore(local=MemoryStore(clock=clock), shared=linked, clock=clock, monotonic=mono)
    await tiered.accept(CRED, clock() + 60)
    await tiered.put(b"k", entry(clock(), await tiered.generations(TAGS)))
    assert (await tiered.lookup(b"k", TAGS, CRED)).entry is not None
    faulty_link.set_mode("refuse")
    with pytest.raises(StoreError):
        await tiered.lookup(b"k", TAGS, CRED)


async def test_outage_grace_serves_exactly_what_redis_said_last_for_a_bounded_time(
    linked: RedisStore, faulty_link: Any, clock: Any, mono: Any
) -> None:
    tiered = TieredStore(
        local=MemoryStore(clock=clock), shared=linked, clock=clock, monotonic=mono, outage_grace=1.0
    )
    await tiered.accept(CRED, clock() + 60)
    gens = await tiered.generations(["jobs", "nodes"])
    await tiered.put(b"j", entry(clock(), gens[:1], tags=("jobs",)))
    await tiered.put(b"n", entry(clock(), gens[1:], tags=("nodes",)))
    assert (await tiered.lookup(b"j", ("jobs",), CRED)).entry is not None
    assert (await tiered.lookup(b"n", ("nodes",), CRED)).entry is not None
    faulty_link.set_mode("refuse")
    mono.advance(0.5)
    found = await tiered.lookup(b"j", ("jobs",), CRED)  # within the grace
    assert found.entry is not None
    assert found.entry.is_valid(("jobs",), found.generations)
    assert found.accepted_until == clock() + 60
    # a write through this replica: its bump fails, yet its tags are forgotten
    with pytest.raises(StoreError):
        await tiered.bump(["jobs"])
    with pytest.raises(StoreError):
        await tiered.lookup(b"j", ("jobs",), CRED)
    assert (await tiered.lookup(b"n", ("nodes",), CRED)).entry is not None
    mono.advance(0.6)  # past the grace: nothing
    with pytest.raises(StoreError):
        await tiered.lookup(b"n", ("nodes",), CRED)
    assert tiered.outage_hits == 2
