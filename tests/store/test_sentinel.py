"""A Sentinel-managed master: the URL works, bumps reach a replica before
they return, and a failover never lets pre-failover entries be served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from cacheproxy.store.base import Entry, StoreError
from cacheproxy.store.redis import RedisStore
from tests.store.servers import RedisServer, SentinelServer

pytestmark = pytest.mark.redis

TAGS = ("jobs", "user:alice")
CRED = b"\x05" * 32
DEADLINE = 30.0
"""Seconds Sentinel may take to discover, promote (readiness waits only)."""


def entry(now: float, gens: tuple[int, ...], body: bytes = b"{}") -> Entry:
    return Entry(200, [(b"content-type", b"application/json")], body, now, 30.0, TAGS, gens)


def master_port(s: redis.Redis) -> int:
    """The master's port in Sentinel's table (what clients are told)."""
    info = s.execute_command("SENTINEL", "MASTER", "mymaster")
    if not isinstance(info, dict):
        info = dict(zip(info[::2], info[1::2], strict=True))
    fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in info.items()}
    return int(fields["port"])


def wait_for(what: str, check: Any) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    pytest.fail(f"never happened: {what}", pytrace=False)


async def test_sentinel_url_bumps_and_failover(
    tmp_path: Path, prefix: str, clock: Any, mono: Any
) -> None:
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(
        tmp_path / "replica", args=["--replicaof", "127.0.0.1", str(master.port)]
    ).start()
    sentinel = SentinelServer(tmp_path / "sentinel", master.port).start()
    m = redis.Redis(port=master.port)
    r = redis.Redis(port=replica.port)
    s = redis.Redis(port=sentinel.port)
    store = RedisStore(
        f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster",
        prefix=prefix,
        clock=clock,
        timeout=0.5,
        monotonic=mono,
    )
    try:
        wait_for("the replica in sync", lambda: r.info("replication")["master_link_status"] == "up")
        wait_for(
            "Sentinel knows the replica",
            lambda: len(s.execute_command("SENTINEL", "REPLICAS", "mymaster")) == 1,
        )
        gens = await store.generations(TAGS)
        e = entry(clock(), gens)
        await store.put(b"k", e)
        assert (await store.lookup(b"k", TAGS, CRED)).entry == e

        await store.bump(["jobs"])
        # WAIT: the bump is on the replica when bump() returns, so a failover
        # right now cannot lose it.
        key = f"{prefix}g:jobs"
        assert r.get(key) == m.get(key)
        before = entry(clock(), await store.generations(TAGS), b"before the failover")
        await store.put(b"k1", before)
        assert (await store.lookup(b"k1", TAGS, CRED)).entry == before

        assert s.execute_command("SENTINEL", "FAILOVER", "mymaster")
        wait_for("the replica promoted", lambda: master_port(s) == replica.port)
        # A write right after the failover, while the store's connections
        # still point at the old master (it asks Sentinel once a second): no
        # replica acknowledges the bump there, so the store asks Sentinel at
        # once and bumps the new master instead.
        await store.bump(["jobs"])
        assert r.get(key).startswith(r.get(f"{prefix}epoch") + b":")
        mono.advance(2)
        for _ in range(200):
            try:
                found = await store.lookup(b"k", TAGS, CRED)
                await store.put(b"k2", entry(clock(), found.generations, b"after"))
                old = await store.lookup(b"k1", TAGS, CRED)
                break
            except StoreError:
                mono.advance(2)
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the store never reached the new master")
        assert found.entry is None or not found.entry.is_valid(TAGS, found.generations)
        # The new master is another server: whatever replication may have
        # lost, nothing cached before the failover is trusted any more.
        assert store.server_changes >= 1
        assert old.entry is None
        assert (await store.lookup(b"k2", TAGS, CRED)).entry is not None
        assert r.info("replication")["role"] == "master"
    finally:
        await store.aclose()
        for c in (m, r, s):
            c.close()
        sentinel.stop()
        replica.stop()
        master.stop()
