"""What only the Redis store has to get right: eviction, server changes,
faults (down, stalled, breaking mid-way), the circuit, lost bumps, URLs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from cacheproxy.core.compress import make_variants
from cacheproxy.http.app import build_store
from cacheproxy.settings import Settings
from cacheproxy.store.base import Entry, StoreError
from cacheproxy.store.redis import RedisStore
from cacheproxy.store.redis_link import parse_sentinel_url, redacted_url
from tests.store import servers

TAGS = ("jobs", "user:alice")
CRED = b"\x07" * 32


def entry(
    now: float, gens: tuple[int, ...], tags: tuple[str, ...] = TAGS, body: bytes = b"{}"
) -> Entry:
    return Entry(200, [(b"content-type", b"application/json")], body, now, 30.0, tags, gens)


def sync_client(server: Any) -> redis.Redis:
    return redis.Redis(port=server.port)


@pytest.fixture
async def store(redis_server: Any, prefix: str, clock: Any) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
    yield s
    await s.aclose()


def stale_but_valid(found: Any, tags: tuple[str, ...] = TAGS) -> bool:
    return found.entry is not None and found.entry.is_valid(tags, found.generations)


# -- eviction and lost state ---------------------------------------------------
async def test_a_vanished_generation_never_revives_old_entries(
    store: RedisStore, redis_server: Any, prefix: str, clock: Any
) -> None:
    """Evict (here: delete) a generation after its bump: counters restarting
    at 0 would make the pre-bump entry valid again."""
    gens = await store.generations(TAGS)
    await store.put(b"k", entry(clock(), gens))
    await store.bump(["jobs"])
    r = sync_client(redis_server)
    try:
        assert r.delete(f"{prefix}g:jobs") == 1
    finally:
        r.close()
    found = await store.lookup(b"k", TAGS, CRED)
    assert not stale_but_valid(found)
    # nor can an in-flight fetch that captured the old value land
    await store.put(b"k2", entry(clock(), gens))
    assert (await store.lookup(b"k2", TAGS, CRED)).entry is None


async def test_a_vanished_generation_invalidates_entries_captured_under_it(
    store: RedisStore, redis_server: Any, prefix: str, clock: Any
) -> None:
    gens = await store.generations(TAGS)
    await store.put(b"k", entry(clock(), gens))
    r = sync_client(redis_server)
    try:
        r.delete(f"{prefix}g:user:alice")
    finally:
        r.close()
    assert not stale_but_valid(await store.lookup(b"k", TAGS, CRED))


async def test_a_vanished_epoch_drops_everything(
    store: RedisStore, redis_server: Any, prefix: str, clock: Any
) -> None:
    gens = await store.generations(TAGS)
    await store.put(b"k", entry(clock(), gens))
    await store.put(b"u", entry(clock(), (), tags=()))
    r = sync_client(redis_server)
    try:
        r.delete(f"{prefix}epoch")
    finally:
        r.close()
    assert (await store.lookup(b"k", TAGS, CRED)).entry is None
    assert (await store.lookup(b"u", (), CRED)).entry is None


async def test_real_eviction_under_memory_pressure_never_serves_pre_write_data(
    fresh_redis: Any, prefix: str, clock: Any
) -> None:
    """allkeys-random evicts generation keys as readily as entries: the
    worst policy for counters that restart at 0."""
    fresh_redis.command("CONFIG", "SET", "maxmemory", str(3 * 1024 * 1024))
    fresh_redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-random")
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=2.0)
    try:
        tags_of = {i: (f"t{i}",) for i in range(300)}
        for i, tags in tags_of.items():
            await store.put(b"k%d" % i, entry(clock(), await store.generations(tags), tags))
        for tags in tags_of.values():
            await store.bump(tags)  # every entry above is now pre-write data
        filler = os.urandom(2_000)
        r = sync_client(fresh_redis)
        try:
            j = 0
            while int(r.info("stats")["evicted_keys"]) < 300:  # about half the keys above
                assert j < 50_000, "no eviction happened"
                tags = (f"f{j}",)
                e = entry(clock(), await store.generations(tags), tags, filler)
                await store.put(b"f%d" % j, e)
                j += 1
            orphans = sum(
                1
                for i in tags_of
                if r.exists(f"{prefix}e:{(b'k%d' % i).hex()}") and not r.exists(f"{prefix}g:t{i}")
            )
        finally:
            r.close()
        assert orphans > 0  # the dangerous case happened: entries outlived their generation
        for i, tags in tags_of.items():
            assert not stale_but_valid(await store.lookup(b"k%d" % i, tags, CRED), tags)
    finally:
        await store.aclose()


async def test_oversized_entries_are_refused(redis_server: Any, prefix: str, clock: Any) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, clock=clock, max_entry_bytes=100_000)
    try:
        big = entry(clock(), await store.generations(TAGS), body=os.urandom(200_000))
        await store.put(b"k", big)
        assert (await store.lookup(b"k", TAGS, CRED)).entry is None
        small = entry(clock(), await store.generations(TAGS), body=os.urandom(50_000))
        await store.put(b"k", small)
        assert (await store.lookup(b"k", TAGS, CRED)).entry == small
    finally:
        await store.aclose()


async def test_compressible_body_takes_less_room_in_redis(
    store: RedisStore, redis_server: Any, prefix: str, clock: Any
) -> None:
    body = b'{"job_id": 1, "job_state": ["RUNNING"], "user_name": "alice"},' * 30_000
    e = Entry(
        200,
        [],
        body,
        clock(),
        30.0,
        TAGS,
        await store.generations(TAGS),
        variants=make_variants(body),
    )
    await store.put(b"k", e)
    r = sync_client(redis_server)
    try:
        used = r.strlen(f"{prefix}e:{b'k'.hex()}")
    finally:
        r.close()
    assert used < len(body) / 4
    assert (await store.lookup(b"k", TAGS, CRED)).entry == e


async def test_scripts_flushed_from_redis_are_loaded_again(
    store: RedisStore, redis_server: Any, clock: Any
) -> None:
    gens = await store.generations(TAGS)
    assert redis_server.command("SCRIPT", "FLUSH") == "+OK"
    await store.put(b"k", entry(clock(), gens))
    assert (await store.lookup(b"k", TAGS, CRED)).entry is not None
    assert not store.circuit.is_open


# -- server changes ------------------------------------------------------------
async def test_restart_from_a_snapshot_drops_everything_cached_before(
    fresh_redis: Any, prefix: str, clock: Any, mono: Any
) -> None:
    """Persistence on: a restart restores entries *and* the generations of
    the snapshot, losing bumps made after it.  The new run_id renews the epoch."""
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0, monotonic=mono)
    try:
        gens = await store.generations(TAGS)
        await store.put(b"k", entry(clock(), gens))
        assert fresh_redis.command("SAVE") == "+OK"
        await store.bump(["jobs"])  # a write after the snapshot
        fresh_redis.kill()
        fresh_redis.start()  # loads dump.rdb from its directory
        r = sync_client(fresh_redis)
        try:
            assert r.exists(f"{prefix}e:{b'k'.hex()}")  # the old entry is back
        finally:
            r.close()
        for _ in range(3):  # the pooled connection is dead: a fault, then a probe
            try:
                found = await store.lookup(b"k", TAGS, CRED)
                break
            except StoreError:
                mono.advance(2)
        else:
            pytest.fail("the store never recovered")
        assert found.entry is None
        assert store.server_changes == 1
        # a replica started after the restart does not trust it either
        late = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0)
        try:
            assert (await late.lookup(b"k", TAGS, CRED)).entry is None
        finally:
            await late.aclose()
    finally:
        await store.aclose()


async def test_a_restart_while_idle_is_not_an_outage(
    fresh_redis: Any, prefix: str, clock: Any
) -> None:
    """Every pooled connection is dead after a restart: each is replaced on
    first use instead of failing a request and opening the circuit."""
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0)
    try:
        await asyncio.gather(*(store.generations(TAGS) for _ in range(40)))  # fill the pool
        fresh_redis.restart()
        found = await asyncio.gather(*(store.lookup(b"k", TAGS, CRED) for _ in range(40)))
        assert all(f.entry is None for f in found)
        assert store.stats()["faults"] == 0
        assert not store.circuit.is_open
    finally:
        await store.aclose()


# -- faults --------------------------------------------------------------------
async def test_redis_down_raises_store_error_and_ping_is_false(
    clock: Any,
) -> None:
    port = servers.free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", clock=clock, timeout=0.05)
    try:
        with pytest.raises(StoreError):
            await store.lookup(b"k", TAGS, CRED)
        assert store.circuit.is_open
        for op in (
            store.generations(TAGS),
            store.put(b"k", entry(clock(), (1, 2))),
            store.accept(CRED, clock() + 5),
            store.acquire_lease(b"k", 1),
            store.clear(),
        ):
            with pytest.raises(StoreError):
                await op
        assert not await store.ping()
        assert store.stats()["faults"] >= 1
    finally:
        await store.aclose()


async def test_refused_connections_open_the_circuit_then_it_recovers(
    faulty_link: Any, prefix: str, clock: Any, mono: Any
) -> None:
    store = RedisStore(faulty_link.url, prefix=prefix, clock=clock, timeout=0.2, monotonic=mono)
    try:
        gens = await store.generations(TAGS)
        faulty_link.set_mode("refuse")
        with pytest.raises(StoreError):
            await store.lookup(b"k", TAGS, CRED)
        attempts = faulty_link.accepted
        for _ in range(20):  # fail fast: Redis is not even tried
            with pytest.raises(StoreError):
                await store.lookup(b"k", TAGS, CRED)
        assert faulty_link.accepted == attempts
        assert store.circuit.rejected == 20
        faulty_link.set_mode("pass")
        mono.advance(1.5)
        found = await store.lookup(b"k", TAGS, CRED)  # the probe
        assert found.generations == gens
        assert not store.circuit.is_open
        assert store.circuit.episodes == 1
    finally:
        await store.aclose()


async def test_a_stalled_redis_is_a_store_error_not_a_hang(
    faulty_link: Any, prefix: str, clock: Any, mono: Any
) -> None:
    store = RedisStore(faulty_link.url, prefix=prefix, clock=clock, timeout=0.05, monotonic=mono)
    try:
        await store.generations(TAGS)
        faulty_link.set_mode("blackhole")
        for _ in range(store.circuit.threshold):  # a timeout is a strike, not yet a verdict
            assert not store.circuit.is_open
            with pytest.raises(StoreError):
                await store.lookup(b"k", TAGS, CRED)
        assert store.circuit.is_open
        assert not await store.ping()
    finally:
        await store.aclose()


async def test_a_paused_redis_server(fresh_redis: Any, prefix: str, clock: Any, mono: Any) -> None:
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=0.05, monotonic=mono)
    try:
        gens = await store.generations(TAGS)
        await store.put(b"k", entry(clock(), gens))
        fresh_redis.pause()
        try:
            with pytest.raises(StoreError):
                await store.lookup(b"k", TAGS, CRED)
        finally:
            fresh_redis.resume()
        mono.advance(1.5)
        assert (await store.lookup(b"k", TAGS, CRED)).entry is not None
    finally:
        await store.aclose()


async def test_a_lost_bump_is_written_before_this_replica_trusts_redis_again(
    faulty_link: Any, redis_server: Any, prefix: str, clock: Any, mono: Any
) -> None:
    """The write's bump fails (Redis unreachable from this replica): nothing
    is served through this replica until the bump has been written."""
    writer = RedisStore(
        faulty_link.url, prefix=prefix, clock=clock, timeout=0.2, monotonic=mono, bump_deadline=0.2
    )
    other = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
    try:
        gens = await writer.generations(TAGS)
        await other.put(b"k", entry(clock(), gens))
        faulty_link.set_mode("refuse")
        with pytest.raises(StoreError):
            await writer.bump(["jobs"])
        assert writer.stats()["pending_bumps"] == 1
        faulty_link.set_mode("pass")
        with pytest.raises(StoreError):  # circuit still open: go upstream
            await writer.lookup(b"k", TAGS, CRED)
        mono.advance(1.5)
        found = await writer.lookup(b"k", TAGS, CRED)  # probe: flush first
        assert not stale_but_valid(found)
        assert writer.stats()["pending_bumps"] == 0
        assert not stale_but_valid(await other.lookup(b"k", TAGS, CRED))
    finally:
        await writer.aclose()
        await other.aclose()


async def test_a_probe_whose_pending_bumps_fail_reopens_the_circuit(
    faulty_link: Any, prefix: str, clock: Any, mono: Any
) -> None:
    """The probe writes the pending bumps first; when that fails Redis is
    still away: the circuit re-opens for a cool-down (no probe on every
    following call), the bumps stay pending and nothing is served."""
    store = RedisStore(
        faulty_link.url, prefix=prefix, clock=clock, timeout=0.2, monotonic=mono, bump_deadline=0.2
    )
    try:
        gens = await store.generations(TAGS)
        await store.put(b"k", entry(clock(), gens))
        faulty_link.set_mode("refuse")
        with pytest.raises(StoreError):
            await store.bump(["jobs"])
        mono.advance(1.5)
        with pytest.raises(StoreError):
            await store.lookup(b"k", TAGS, CRED)  # the probe: its flush fails
        assert store.circuit.is_open
        assert store.circuit.enter() is None  # a cool-down again, not another probe
        assert store.stats()["pending_bumps"] == 1
        faulty_link.set_mode("pass")
        mono.advance(1.5)
        assert not stale_but_valid(await store.lookup(b"k", TAGS, CRED))
        assert store.stats()["pending_bumps"] == 0
    finally:
        await store.aclose()


async def test_bumps_failing_while_the_circuit_is_open_are_kept_too(
    faulty_link: Any, prefix: str, clock: Any, mono: Any
) -> None:
    store = RedisStore(
        faulty_link.url, prefix=prefix, clock=clock, timeout=0.2, monotonic=mono, bump_deadline=0.2
    )
    try:
        gens = await store.generations(["a", "b"])
        await store.put(b"k", entry(clock(), gens, ("a", "b")))
        faulty_link.set_mode("refuse")
        for tag in ("a", "b"):
            with pytest.raises(StoreError):
                await store.bump([tag])
        assert store.stats()["pending_bumps"] == 2
        faulty_link.set_mode("pass")
        mono.advance(1.5)
        after = await store.generations(["a", "b"])
        assert after[0] != gens[0]
        assert after[1] != gens[1]
    finally:
        await store.aclose()


async def test_a_bump_outlasts_a_short_stall(fresh_redis: Any, prefix: str, clock: Any) -> None:
    """Read-your-writes rests on bumps: one that meets a stalled Redis is
    tried again (within its deadline) instead of being lost."""
    store = RedisStore(
        fresh_redis.url,
        prefix=prefix,
        clock=clock,
        timeout=0.05,
        bump_timeout=0.1,
        bump_deadline=30,
    )
    try:
        before = await store.generations(TAGS)
        await store.bump(["jobs"])  # a connection in the bump pool
        fresh_redis.pause()
        asyncio.get_running_loop().call_later(0.5, fresh_redis.resume)
        await store.bump(["jobs"])  # must not raise
        assert store.bump_retries >= 1
        assert store.stats()["pending_bumps"] == 0
        after = await store.generations(TAGS)
        assert after[0] != before[0]
        assert after[1] == before[1]
    finally:
        fresh_redis.resume()
        await store.aclose()


async def test_a_burst_of_writes_bumps_without_errors(store: RedisStore) -> None:
    before = await store.generations([f"t{i}" for i in range(50)])
    await asyncio.gather(*(store.bump([f"t{i}"]) for i in range(50)))
    after = await store.generations([f"t{i}" for i in range(50)])
    assert all(a != b for a, b in zip(after, before, strict=True))
    assert store.bump_retries == 0
    assert store.stats()["faults"] == 0


async def test_bumps_are_tried_even_while_the_circuit_is_open(
    redis_server: Any, prefix: str, clock: Any, mono: Any
) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, clock=clock, monotonic=mono)
    try:
        before = await store.generations(TAGS)
        store.circuit.failure(None, "lookups timed out")
        await store.bump(["jobs"])
        assert store.circuit.is_open  # lookups still skip Redis
        mono.advance(2)
        assert (await store.generations(TAGS))[0] != before[0]
    finally:
        await store.aclose()


async def test_error_replies_do_not_open_the_circuit(
    fresh_redis: Any, prefix: str, clock: Any
) -> None:
    """Redis answers (OOM under noeviction): stores fail, reads still work."""
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0)
    try:
        gens = await store.generations(TAGS)
        await store.put(b"small", entry(clock(), gens))
        fresh_redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        fresh_redis.command("CONFIG", "SET", "maxmemory", "1")
        with pytest.raises(StoreError):
            await store.put(b"k", entry(clock(), gens, body=os.urandom(10_000)))
        assert not store.circuit.is_open
        assert (await store.lookup(b"small", TAGS, CRED)).entry is not None
        warnings = await store.check_server()
        assert any("noeviction" in w for w in warnings)
    finally:
        fresh_redis.command("CONFIG", "SET", "maxmemory", "0")
        await store.aclose()


async def test_concurrent_lookups_beyond_the_connection_limit(
    redis_server: Any, prefix: str, clock: Any
) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0, max_connections=4)
    try:
        gens = await store.generations(TAGS)
        await store.put(b"k", entry(clock(), gens))
        found = await asyncio.gather(*(store.lookup(b"k", TAGS, CRED) for _ in range(200)))
        assert all(f.entry is not None for f in found)
        assert not store.circuit.is_open
    finally:
        await store.aclose()


# -- URLs ------------------------------------------------------------------------
async def test_unix_socket_url(
    tmp_path: Path,
    clock: Any,
) -> None:
    sock = tmp_path / "redis.sock"
    server = servers.RedisServer(
        tmp_path / "unix", args=["--unixsocket", str(sock), "--unixsocketperm", "700"]
    ).start()
    store = RedisStore(f"unix://{sock}?db=2", clock=clock, timeout=1.0)
    try:
        gens = await store.generations(TAGS)
        await store.put(b"k", entry(clock(), gens))
        assert (await store.lookup(b"k", TAGS, CRED)).entry is not None
        assert await store.ping()
    finally:
        await store.aclose()
        server.stop()


async def test_rediss_url(
    tmp_path: Path,
    clock: Any,
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    tls_port = servers.free_port()
    server = servers.RedisServer(
        tmp_path / "tls",
        args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(cert_pem),
            "--tls-key-file",
            str(key_pem),
            "--tls-ca-cert-file",
            str(ca_pem),
            "--tls-auth-clients",
            "no",
        ],
    ).start()
    store = RedisStore(
        f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca_pem}", clock=clock, timeout=1.0
    )
    try:
        gens = await store.generations(TAGS)
        await store.put(b"k", entry(clock(), gens))
        assert (await store.lookup(b"k", TAGS, CRED)).entry is not None
    finally:
        await store.aclose()
        server.stop()


def test_sentinel_url_parsing() -> None:
    t = parse_sentinel_url(
        "redis+sentinel://u:p%40ss@s1:26379,s2:26380/mymaster/3?sentinel_password=sp"
    )
    assert t.sentinels == [("s1", 26379), ("s2", 26380)]
    assert (t.service, t.db, t.username, t.password, t.sentinel_password) == (
        "mymaster",
        3,
        "u",
        "p@ss",
        "sp",
    )
    t = parse_sentinel_url("redis+sentinel://sentinel/cache")
    assert t.sentinels == [("sentinel", 26379)]
    assert (t.service, t.db, t.password) == ("cache", 0, None)
    with pytest.raises(ValueError, match="service"):
        parse_sentinel_url("redis+sentinel://s1:26379")


async def test_sentinel_store_can_be_built_without_connecting(clock: Any) -> None:
    store = RedisStore("redis+sentinel://127.0.0.1:1/mymaster", clock=clock, timeout=0.05)
    try:
        with pytest.raises(StoreError):
            await store.generations(TAGS)
    finally:
        await store.aclose()


async def test_passwords_never_reach_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert redacted_url("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted_url("rediss://user:secret@h/0") == "rediss://user:***@h/0"
    store = RedisStore("redis://:secret@127.0.0.1:1/0", timeout=0.05)
    try:
        assert "secret" not in repr(store)
        with pytest.raises(StoreError):
            await store.lookup(b"k", TAGS, CRED)
        await store.check_server()
        assert "secret" not in caplog.text
        assert caplog.text  # it did log the fault
    finally:
        await store.aclose()


@pytest.mark.parametrize("local_tier", [False, True])
async def test_max_entry_bytes_reaches_the_redis_store(
    redis_server: Any, prefix: str, local_tier: bool
) -> None:
    """The store ``serve`` builds refuses an entry above ``max_entry_bytes``
    (the setting never reached RedisStore, which kept its own 16 MiB)."""
    settings = Settings(
        upstream="http://127.0.0.1:1",
        redis_url=redis_server.url,
        redis_prefix=prefix,
        redis_timeout=1.0,
        local_tier=local_tier,
        max_entry_bytes=100_000,
    )
    store, shared = build_store(settings)
    assert shared
    try:
        now = time.time()
        big = entry(now, await store.generations(TAGS), body=os.urandom(200_000))
        assert not await store.put(b"big", big)
        assert (await store.lookup(b"big", TAGS, CRED)).entry is None
        small = entry(now, await store.generations(TAGS), body=os.urandom(50_000))
        assert await store.put(b"small", small)
        found = (await store.lookup(b"small", TAGS, CRED)).entry
        assert found is not None
        assert found.body == small.body
    finally:
        await store.aclose()
