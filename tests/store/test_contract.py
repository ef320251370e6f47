"""The Store contract, one mixin run against every store (as cachetools tests
every cache class with one mixin).

A concrete class provides two fixtures: ``store`` and ``peer``.  ``peer`` is
what another replica sees: for a shared store another instance on the same
backend, for an in-process store the store itself.  Time is the injected
``clock`` fixture, so TTL tests never sleep.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest

from cacheproxy.core.compress import make_variants
from cacheproxy.store.base import Entry, Generations, Store
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore
from cacheproxy.store.tiered import TieredStore

TAGS = ("jobs", "user:alice")
CRED = b"\x01" * 32


def make_entry(
    now: float,
    gens: Generations,
    tags: Sequence[str] = TAGS,
    *,
    body: bytes = b'{"jobs": []}',
    ttl: float = 10.0,
    stale_for: float = 5.0,
    status: int = 200,
    variants: tuple[tuple[bytes, bytes], ...] = (),
) -> Entry:
    return Entry(
        status=status,
        headers=[
            (b"content-type", b"application/json"),
            (b"x-dup", b"one"),
            (b"x-dup", b"two"),
            (b"x-bin", bytes(range(1, 32))),
        ],
        body=body,
        stored_at=now,
        ttl=ttl,
        tags=tuple(tags),
        generations=gens,
        stale_for=stale_for,
        variants=variants,
        origin=now - 0.25,
    )


class StoreContract:
    """Behaviour every :class:`~cacheproxy.store.base.Store` must have."""

    shared: ClassVar[bool] = False
    """True when ``peer`` is a different instance (another replica)."""

    async def test_empty_store_misses(self, store: Store) -> None:
        found = await store.lookup(b"k", TAGS, CRED)
        assert found.entry is None
        assert found.accepted_until == 0.0
        assert len(found.generations) == len(TAGS)

    async def test_put_then_lookup_returns_the_same_entry(self, store: Store, clock: Any) -> None:
        gens = await store.generations(TAGS)
        entry = make_entry(clock(), gens, body=b"\x00binary\xff" * 100)
        await store.put(b"k", entry)
        found = await store.lookup(b"k", TAGS, CRED)
        assert found.entry == entry
        assert found.generations == gens
        assert found.entry.is_valid(TAGS, found.generations)

    async def test_variants_and_origin_are_kept(self, store: Store, clock: Any) -> None:
        body = b'{"jobs": [%s]}' % b",".join(b'{"job_id": %d}' % i for i in range(500))
        variants = make_variants(body)
        assert {name for name, _ in variants} == {b"zstd", b"gzip"}
        gens = await store.generations(TAGS)
        entry = make_entry(clock(), gens, body=body, variants=variants)
        await store.put(b"k", entry)
        found = (await store.lookup(b"k", TAGS, CRED)).entry
        assert found == entry
        assert found is not None
        assert found.origin == clock() - 0.25

    async def test_an_entry_that_cannot_be_stored_is_simply_not_stored(
        self, store: Store, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)
        odd = make_entry(clock(), gens)
        odd = Entry(
            **{**{f: getattr(odd, f) for f in odd.__slots__}, "headers": [(b"x" * 70_000, b"v")]}
        )
        await store.put(b"k", odd)  # no exception; maybe stored, maybe not
        found = (await store.lookup(b"k", TAGS, CRED)).entry
        assert found is None or found == odd

    async def test_keys_are_distinct(self, store: Store, clock: Any) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"a", make_entry(clock(), gens, body=b"A"))
        await store.put(b"b", make_entry(clock(), gens, body=b"B"))
        a = (await store.lookup(b"a", TAGS, CRED)).entry
        b = (await store.lookup(b"b", TAGS, CRED)).entry
        assert a is not None
        assert a.body == b"A"
        assert b is not None
        assert b.body == b"B"

    async def test_put_replaces(self, store: Store, clock: Any) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens, body=b"old"))
        await store.put(b"k", make_entry(clock(), gens, body=b"new"))
        found = (await store.lookup(b"k", TAGS, CRED)).entry
        assert found is not None
        assert found.body == b"new"

    async def test_remove(self, store: Store, peer: Store, clock: Any) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens))
        assert (await peer.lookup(b"k", TAGS, CRED)).entry is not None
        await peer.remove(b"k")
        assert (await store.lookup(b"k", TAGS, CRED)).entry is None
        await store.remove(b"never-stored")  # no error

    async def test_entry_lives_ttl_plus_stale_for(self, store: Store, clock: Any) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens, ttl=10, stale_for=5))
        clock.advance(9.9)
        found = (await store.lookup(b"k", TAGS, CRED)).entry
        assert found is not None
        assert found.is_fresh(clock())
        clock.advance(5.0)  # stale but servable on errors
        found = (await store.lookup(b"k", TAGS, CRED)).entry
        assert found is not None
        assert not found.is_fresh(clock())
        clock.advance(0.2)  # past ttl + stale_for: gone
        assert (await store.lookup(b"k", TAGS, CRED)).entry is None

    async def test_entry_expired_before_put_is_never_returned(
        self, store: Store, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock() - 100, gens, ttl=10, stale_for=5))
        assert (await store.lookup(b"k", TAGS, CRED)).entry is None

    async def test_generations_are_stable_until_bumped(self, store: Store, peer: Store) -> None:
        first = await store.generations(TAGS)
        assert len(first) == len(TAGS)
        assert await store.generations(TAGS) == first
        assert await peer.generations(TAGS) == first
        assert (await store.lookup(b"k", TAGS, CRED)).generations == first

    async def test_bump_changes_only_the_bumped_tags(self, store: Store, peer: Store) -> None:
        before = await store.generations(["a", "b", "c"])
        await peer.bump(["b"])
        after = await store.generations(["a", "b", "c"])
        assert after[0] == before[0]
        assert after[1] != before[1]
        assert after[2] == before[2]
        # order follows the request
        assert await store.generations(["c", "a"]) == (after[2], after[0])

    async def test_every_bump_gives_a_new_generation(self, store: Store) -> None:
        seen = {await store.generations(["t"])}
        for _ in range(20):
            await store.bump(["t"])
            seen.add(await store.generations(["t"]))
        assert len(seen) == 21

    async def test_entry_captured_before_a_bump_is_not_valid(
        self, store: Store, peer: Store, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens))
        await peer.bump(["user:alice"])
        found = await store.lookup(b"k", TAGS, CRED)
        assert found.entry is None or not found.entry.is_valid(TAGS, found.generations)

    async def test_put_is_refused_after_a_bump(self, store: Store, peer: Store, clock: Any) -> None:
        """The race: a fetch starts, a write bumps, the fetch's result arrives."""
        gens = await store.generations(TAGS)  # fetch starts
        await peer.bump(["jobs"])  # a write lands (through another replica)
        await store.put(b"k", make_entry(clock(), gens))  # stale result arrives
        found = await peer.lookup(b"k", TAGS, CRED)
        assert found.entry is None
        found = await store.lookup(b"k", TAGS, CRED)
        assert found.entry is None

    async def test_put_is_kept_when_an_unrelated_tag_is_bumped(
        self, store: Store, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)
        await store.bump(["nodes"])
        await store.put(b"k", make_entry(clock(), gens))
        assert (await store.lookup(b"k", TAGS, CRED)).entry is not None

    async def test_concurrent_bumps_and_puts_never_leave_a_valid_stale_entry(
        self, store: Store, peer: Store, clock: Any
    ) -> None:
        """Whatever the interleaving, an entry captured before a bump that
        has completed is never valid afterwards."""
        for i in range(30):
            key = b"race%d" % i
            gens = await store.generations(TAGS)
            await asyncio.gather(
                store.put(key, make_entry(clock(), gens)),
                peer.bump([TAGS[i % 2]]),
            )
            found = await store.lookup(key, TAGS, CRED)
            assert found.entry is None or not found.entry.is_valid(TAGS, found.generations)

    async def test_untagged_entries(self, store: Store, clock: Any) -> None:
        gens = await store.generations([])
        assert gens == ()
        await store.put(b"k", make_entry(clock(), gens, tags=()))
        found = await store.lookup(b"k", [], CRED)
        assert found.entry is not None
        assert found.entry.is_valid([], found.generations)

    async def test_many_tags(self, store: Store, clock: Any) -> None:
        tags = [f"job:{i}" for i in range(60)]
        gens = await store.generations(tags)
        await store.put(b"k", make_entry(clock(), gens, tags=tags))
        found = await store.lookup(b"k", tags, CRED)
        assert found.entry is not None
        assert found.entry.is_valid(tags, found.generations)
        await store.bump(["job:59"])
        found = await store.lookup(b"k", tags, CRED)
        assert found.entry is None or not found.entry.is_valid(tags, found.generations)

    async def test_acceptance_until_expiry(self, store: Store, peer: Store, clock: Any) -> None:
        until = clock() + 30.0
        await store.accept(CRED, until)
        assert (await store.lookup(b"k", TAGS, CRED)).accepted_until == until
        assert (await peer.lookup(b"k", TAGS, CRED)).accepted_until == until
        assert (await store.lookup(b"k", TAGS, b"\x02" * 32)).accepted_until == 0.0
        clock.advance(30.0)
        assert (await store.lookup(b"k", TAGS, CRED)).accepted_until == 0.0

    async def test_acceptance_in_the_past_is_not_an_acceptance(
        self, store: Store, clock: Any
    ) -> None:
        await store.accept(CRED, clock() - 1)
        assert (await store.lookup(b"k", TAGS, CRED)).accepted_until == 0.0

    async def test_acceptance_is_renewed(self, store: Store, clock: Any) -> None:
        await store.accept(CRED, clock() + 5)
        await store.accept(CRED, clock() + 50)
        clock.advance(10)
        assert (await store.lookup(b"k", TAGS, CRED)).accepted_until == clock() + 40

    async def test_revoke(self, store: Store, peer: Store, clock: Any) -> None:
        await store.accept(CRED, clock() + 30)
        await peer.revoke(CRED)
        assert (await store.lookup(b"k", TAGS, CRED)).accepted_until == 0.0
        await store.revoke(b"never-accepted")

    async def test_lease_acquire_and_release(self, store: Store, peer: Store) -> None:
        assert await store.acquire_lease(b"k", 10.0)
        if self.shared:
            assert not await peer.acquire_lease(b"k", 10.0)
            assert await peer.acquire_lease(b"other", 10.0)
        await store.release_lease(b"k")
        assert await peer.acquire_lease(b"k", 10.0)
        await peer.release_lease(b"k")
        await peer.release_lease(b"other")

    async def test_lease_expires(self, store: Store, peer: Store) -> None:
        assert await store.acquire_lease(b"k", 0.05)
        # Behaviour, not timing: it becomes free eventually, without a release.
        deadline = time.monotonic() + 10
        while not await peer.acquire_lease(b"k", 10.0):
            assert time.monotonic() < deadline, "lease never expired"
            await asyncio.sleep(0.02)

    async def test_release_by_non_owner_keeps_the_lease(self, store: Store, peer: Store) -> None:
        if not self.shared:
            pytest.skip("one process: leases are not exclusive by design")
        assert await store.acquire_lease(b"k", 10.0)
        await peer.release_lease(b"k")
        assert not await peer.acquire_lease(b"k", 10.0)

    async def test_clear_drops_entries_everywhere(
        self, store: Store, peer: Store, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens))
        await store.put(b"u", make_entry(clock(), (), tags=()))
        await peer.clear()
        assert (await store.lookup(b"k", TAGS, CRED)).entry is None
        assert (await store.lookup(b"u", [], CRED)).entry is None
        # the store keeps working after a clear
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens))
        assert (await peer.lookup(b"k", TAGS, CRED)).entry is not None

    async def test_clear_refuses_fetches_in_flight(
        self, store: Store, peer: Store, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)  # fetch starts
        await peer.clear()
        await store.put(b"k", make_entry(clock(), gens))  # lands after the clear
        found = await store.lookup(b"k", TAGS, CRED)
        assert found.entry is None or not found.entry.is_valid(TAGS, found.generations)

    async def test_clear_keeps_acceptances(self, store: Store, clock: Any) -> None:
        await store.accept(CRED, clock() + 30)
        await store.clear()
        assert (await store.lookup(b"k", TAGS, CRED)).accepted_until == clock() + 30

    @pytest.mark.parametrize("kind", ["random", "json", "json-without-variants"])
    async def test_large_body(self, store: Store, peer: Store, clock: Any, kind: str) -> None:
        if kind == "random":
            body = os.urandom(5 * 1024 * 1024)
        else:
            row = b'{"job_id": %d, "user_name": "alice", "job_state": ["RUNNING"]},'
            body = b"[" + b"".join(row % i for i in range(80_000)) + b"{}]"
            assert len(body) > 5 * 1024 * 1024
        variants = make_variants(body) if kind == "json" else ()
        assert (kind == "json") == bool(variants)
        entry = make_entry(clock(), await store.generations(TAGS), body=body, variants=variants)
        await store.put(b"big", entry)
        for s in (store, peer):
            found = (await s.lookup(b"big", TAGS, CRED)).entry
            assert found is not None
            assert found.body == body
            assert found == entry


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self, clock: Any) -> MemoryStore:
        return MemoryStore(clock=clock)

    @pytest.fixture
    def peer(self, store: MemoryStore) -> MemoryStore:
        return store

    async def test_byte_bound_evicts_least_recently_used(self, clock: Any) -> None:
        probe = make_entry(clock(), (0, 0), body=b"x" * 1000)
        store = MemoryStore(max_bytes=probe.size * 3, clock=clock)
        for k in (b"a", b"b", b"c"):
            await store.put(k, probe)
        await store.lookup(b"a", TAGS, CRED)  # a is now most recently used
        await store.put(b"d", probe)
        assert store.currsize <= store.max_bytes
        assert (await store.lookup(b"b", TAGS, CRED)).entry is None
        for k in (b"a", b"c", b"d"):
            assert (await store.lookup(k, TAGS, CRED)).entry is not None
        await store.put(b"huge", make_entry(clock(), (0, 0), body=b"x" * probe.size * 4))
        assert (await store.lookup(b"huge", TAGS, CRED)).entry is None
        assert store.evictions == 1

    async def test_a_replacing_answer_too_big_to_keep_drops_the_old_one(self, clock: Any) -> None:
        small = make_entry(clock(), (0, 0), body=b"x" * 100)
        store = MemoryStore(max_bytes=small.size * 2, clock=clock)
        await store.put(b"k", small)
        await store.put(b"k", make_entry(clock(), (0, 0), body=b"x" * small.size * 4))
        assert (await store.lookup(b"k", TAGS, CRED)).entry is None


class TestRedisStore(StoreContract):
    shared = True

    @pytest.fixture
    async def store(self, redis_server: Any, prefix: str, clock: Any) -> AsyncIterator[RedisStore]:
        s = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
        yield s
        await s.aclose()

    @pytest.fixture
    async def peer(self, redis_server: Any, prefix: str, clock: Any) -> AsyncIterator[RedisStore]:
        s = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
        yield s
        await s.aclose()

    async def test_clear_touches_nothing_outside_the_prefix(
        self, store: RedisStore, redis_server: Any, prefix: str, clock: Any
    ) -> None:
        other = RedisStore(redis_server.url, prefix=prefix + "x*[", clock=clock, timeout=1.0)
        try:
            gens = await other.generations(TAGS)
            await other.put(b"k", make_entry(clock(), gens))
            assert redis_server.command("SET", "unrelated:key", "keep") == "+OK"
            assert redis_server.command("SET", prefix[:-1], "keep") == "+OK"
            await store.put(b"k", make_entry(clock(), await store.generations(TAGS)))
            await store.clear()
            assert (await store.lookup(b"k", TAGS, CRED)).entry is None
            assert redis_server.command("GET", "unrelated:key") == "$4"
            assert redis_server.command("GET", prefix[:-1]) == "$4"
            assert (await other.lookup(b"k", TAGS, CRED)).entry is not None
        finally:
            await other.aclose()
            redis_server.command("DEL", "unrelated:key", prefix[:-1])

    async def test_every_key_is_under_the_prefix(
        self, store: RedisStore, redis_server: Any, prefix: str, clock: Any
    ) -> None:
        gens = await store.generations(TAGS)
        await store.put(b"k", make_entry(clock(), gens))
        await store.accept(CRED, clock() + 10)
        await store.acquire_lease(b"k", 10)
        await store.bump(["jobs"])
        await store.clear()
        import redis

        sync = redis.Redis(port=redis_server.port)
        try:
            keys = sync.keys(prefix.encode() + b"*")
            assert keys  # sanity: it did write
            assert all(k.startswith(prefix.encode()) for k in keys)
            everything = sync.keys(b"*")
            ours = [k for k in everything if k.startswith(prefix.encode())]
            assert sorted(ours) == sorted(keys)
        finally:
            sync.close()

    async def test_tokens_are_not_stored_in_clear(
        self, store: RedisStore, redis_server: Any, prefix: str, clock: Any
    ) -> None:
        """The store keys what the proxy gives it (HMACs) and adds nothing."""
        await store.accept(CRED, clock() + 10)
        import redis

        sync = redis.Redis(port=redis_server.port)
        try:
            for k in sync.keys(prefix.encode() + b"*"):
                assert b"sim-token" not in k
        finally:
            sync.close()


class TestTieredStore(StoreContract):
    shared = True

    @pytest.fixture
    async def store(self, redis_server: Any, prefix: str, clock: Any) -> AsyncIterator[TieredStore]:
        shared = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
        s = TieredStore(local=MemoryStore(clock=clock), shared=shared, clock=clock)
        yield s
        await s.aclose()

    @pytest.fixture
    async def peer(self, redis_server: Any, prefix: str, clock: Any) -> AsyncIterator[TieredStore]:
        shared = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
        s = TieredStore(local=MemoryStore(clock=clock), shared=shared, clock=clock)
        yield s
        await s.aclose()
