"""The in-process store's generations as a hit reads them: memoised per tag
set, and never a value a bump, a clear or pruning has changed."""

from __future__ import annotations

from cacheproxy.store import memory
from cacheproxy.store.memory import MemoryStore
from tests.clock import Clock

TAGS = ("jobs", "user:alice")
CRED = b"c" * 32


async def test_a_bump_changes_what_the_next_lookup_reads() -> None:
    store = MemoryStore(clock=Clock())
    first = store.lookup_now(b"k", TAGS, CRED).generations
    assert store.lookup_now(b"k", TAGS, CRED).generations == first
    await store.bump(["jobs"])
    after = store.lookup_now(b"k", TAGS, CRED).generations
    assert after[0] != first[0]
    assert after[1] == first[1]
    assert await store.generations(TAGS) == after
    await store.bump(["user:alice"])
    assert store.lookup_now(b"k", list(TAGS), CRED).generations[1] != after[1]


async def test_clear_and_pruning_change_what_is_read() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, max_lifetime=10.0)
    await store.bump(["old"])
    bumped = store.lookup_now(b"k", ("old",), CRED).generations
    await store.clear()
    cleared = store.lookup_now(b"k", ("old",), CRED).generations
    assert cleared != bumped
    await store.bump(["old"])
    clock.advance(11.0)
    for _ in range(memory._PRUNE_EVERY):  # the prune runs every so many bumps
        await store.bump(["other"])
    assert "old" not in store._gens  # pruned: it reads the floor again
    assert store.lookup_now(b"k", ("old",), CRED).generations == cleared


async def test_the_memo_of_reads_is_bounded() -> None:
    store = MemoryStore(clock=Clock())
    for i in range(memory._MAX_READS + 10):
        store.lookup_now(b"k", (f"t{i}",), CRED)
    assert len(store._read) <= memory._MAX_READS
