"""The byte-bounded memo (cacheproxy/core/memo.py): its bound, its LRU order."""

from __future__ import annotations

from cacheproxy.core.memo import ENTRY_OVERHEAD, ByteMemo


def test_the_bound_holds_whatever_the_entries_sizes() -> None:
    memo: ByteMemo[int, str] = ByteMemo(10 * (100 + ENTRY_OVERHEAD))
    for i in range(100):
        memo.put(i, "v", 100)
        assert memo.bytes <= memo.max_bytes
    assert len(memo) == 10
    assert memo.bytes == 10 * (100 + ENTRY_OVERHEAD)
    assert [i for i in range(100) if memo.get(i) is not None] == list(range(90, 100))


def test_the_least_recently_read_goes_first() -> None:
    memo: ByteMemo[str, int] = ByteMemo(3 * (10 + ENTRY_OVERHEAD))
    for name in "abc":
        memo.put(name, ord(name), 10)
    assert memo.get("a") == ord("a")  # now the most recently used
    memo.put("d", 4, 10)
    assert memo.get("b") is None
    assert [memo.get(k) for k in "acd"] == [ord("a"), ord("c"), 4]


def test_a_large_entry_evicts_as_many_as_it_needs() -> None:
    memo: ByteMemo[str, int] = ByteMemo(4 * (10 + ENTRY_OVERHEAD))
    for name in "abcd":
        memo.put(name, 0, 10)
    memo.put("big", 1, 2 * (10 + ENTRY_OVERHEAD) + 5)
    assert memo.get("big") == 1
    assert [k for k in "abcd" if memo.get(k) is not None] == ["d"]
    assert memo.bytes == (10 + ENTRY_OVERHEAD) + 2 * (10 + ENTRY_OVERHEAD) + 5 + ENTRY_OVERHEAD


def test_an_entry_above_the_whole_bound_is_not_kept_and_drops_an_older_value() -> None:
    memo: ByteMemo[str, int] = ByteMemo(1000)
    memo.put("k", 1, 10)
    memo.put("k", 2, 1000)
    assert memo.get("k") is None
    assert memo.bytes == 0
    assert len(memo) == 0


def test_replacing_and_popping_keep_the_count_exact() -> None:
    memo: ByteMemo[str, int] = ByteMemo(10_000)
    memo.put("k", 1, 10)
    memo.put("k", 2, 30)
    assert memo.get("k") == 2
    assert memo.bytes == 30 + ENTRY_OVERHEAD
    memo.pop("k")
    memo.pop("k")
    assert memo.bytes == 0
    assert memo.get("k") is None
