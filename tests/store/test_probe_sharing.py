"""Identical probes of one event-loop turn share one PROBE, and only while it
is not written to Redis (read-your-writes); faults and cancellations reach
each sharer as they would reach a probe of its own."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from cacheproxy.store.base import StoreError
from cacheproxy.store.redis import RedisStore

TAGS = ("jobs", "user:alice")
CRED = b"\x07" * 32
OTHER = b"\x08" * 32


def evalsha_calls(server: Any) -> int:
    r = redis.Redis(port=server.port)
    try:
        stats: dict[str, Any] = r.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        r.close()


@pytest.fixture
async def store(fresh_redis: Any, prefix: str, clock: Any) -> AsyncIterator[RedisStore]:
    s = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0)
    await s.generations(TAGS)  # a connection open: probes take the shared path
    yield s
    await s.aclose()


async def test_identical_probes_of_one_turn_send_one_probe(
    store: RedisStore, fresh_redis: Any
) -> None:
    before = evalsha_calls(fresh_redis)
    answers = await asyncio.gather(*(store.probe(b"k", TAGS, CRED) for _ in range(8)))
    assert evalsha_calls(fresh_redis) - before == 1
    assert all(a == answers[0] for a in answers)
    assert answers[0][0] is None
    assert len(answers[0][1]) == len(TAGS)


async def test_probes_that_differ_are_not_shared(store: RedisStore, fresh_redis: Any) -> None:
    before = evalsha_calls(fresh_redis)
    await asyncio.gather(
        store.probe(b"k", TAGS, CRED),
        store.probe(b"k", TAGS, OTHER),  # another credential
        store.probe(b"k2", TAGS, CRED),  # another key
        store.probe(b"k", TAGS[:1], CRED),  # other tags
        store.probe(b"k", TAGS, CRED),  # shares the first
    )
    assert evalsha_calls(fresh_redis) - before == 4


async def test_a_probe_already_written_is_not_joined(
    store: RedisStore, fresh_redis: Any, prefix: str
) -> None:
    """A bump acknowledged after the first probe was written must be seen by
    a probe made after the bump, though the first one is still in flight."""
    first = asyncio.create_task(store.probe(b"k", TAGS, CRED))
    await asyncio.sleep(0)  # the probe is made
    await asyncio.sleep(0)  # ... and written (the connection flushes a turn later)
    r = redis.Redis(port=fresh_redis.port)
    try:
        # A write through another replica, completed (blocking this loop: the
        # first probe's reply is not read yet).
        epoch = r.get(f"{prefix}epoch")
        assert epoch is not None
        r.set(f"{prefix}g:jobs", epoch + b":4242")
    finally:
        r.close()
    second = await store.probe(b"k", TAGS, CRED)
    assert second[1][0] == 4242
    assert (await first)[1][0] != 4242  # Redis answered it before the write


async def test_a_cancelled_leader_leaves_the_joiners_their_answer(store: RedisStore) -> None:
    tasks = [asyncio.create_task(store.probe(b"k", TAGS, CRED)) for _ in range(3)]
    await asyncio.sleep(0)  # all made, joined, not yet written
    tasks[0].cancel()
    tasks[1].cancel()  # a joiner too
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    version, gens, _ = await tasks[2]
    assert version is None
    assert len(gens) == len(TAGS)
    assert not store.circuit.is_open


async def test_a_failing_shared_probe_fails_every_sharer(
    faulty_link: Any, prefix: str, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(faulty_link.url, prefix=prefix, clock=clock, timeout=0.05)
    try:
        await store.generations(TAGS)
        faulty_link.set_mode("blackhole")
        results = await asyncio.gather(
            *(store.probe(b"k", TAGS, CRED) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StoreError) for r in results), results
        assert store.circuit.is_open  # each sharer's timeout a strike, as its own would be
    finally:
        await store.aclose()
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_broken_connection_fails_every_sharer_over_to_a_new_one(
    store: RedisStore, fresh_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed under them: each sharer gets the connection error, tries once
    more on a new connection (as a probe of its own would), and is answered."""
    caplog.set_level(logging.DEBUG)
    tasks = [asyncio.create_task(store.probe(b"k", TAGS, CRED)) for _ in range(4)]
    await asyncio.sleep(0)  # made and joined, not written
    store.link.reads.drop_all()
    answers = await asyncio.gather(*tasks)
    assert all(a == answers[0] for a in answers)
    assert store.stats()["faults"] == 0
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_scripts_flushed_under_shared_probes_are_loaded_again(
    store: RedisStore, fresh_redis: Any
) -> None:
    """Every sharer gets the NOSCRIPT reply and recovers as its own probe would."""
    assert fresh_redis.command("SCRIPT", "FLUSH") == "+OK"
    answers = await asyncio.gather(*(store.probe(b"k", TAGS, CRED) for _ in range(5)))
    assert all(a == answers[0] for a in answers)
    assert not store.circuit.is_open
    assert store.stats()["faults"] == 0
