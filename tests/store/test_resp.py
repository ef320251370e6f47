"""The hit path's own Redis client (cacheproxy/store/resp.py) against a real
redis-server: handshakes, server changes, scripts, faults, pipelining, and
the production event loop (uvloop)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from cacheproxy.store.base import Entry, StoreError
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore
from cacheproxy.store.resp import Endpoint, RespPool, pack
from cacheproxy.store.tiered import TieredStore
from tests.store import servers

TAGS = ("jobs", "user:alice")
CRED = b"\x0b" * 32


def entry(now: float, gens: tuple[int, ...], body: bytes = b"{}") -> Entry:
    return Entry(200, [(b"content-type", b"application/json")], body, now, 30.0, TAGS, gens)


@pytest.fixture
def debug_redis(tmp_path: Path) -> Iterator[servers.RedisServer]:
    """A Redis that accepts DEBUG SLEEP (off by default since Redis 7)."""
    server = servers.RedisServer(tmp_path / "debug", args=["--enable-debug-command", "yes"])
    server.start()
    yield server
    server.stop()


def stall(server: servers.RedisServer, seconds: float) -> socket.socket:
    """Send DEBUG SLEEP on a raw connection: the whole server stops answering."""
    s = socket.create_connection(("127.0.0.1", server.port), 1.0)
    s.sendall(pack([b"DEBUG", b"SLEEP", str(seconds).encode()]))
    return s


# -- the production loop ---------------------------------------------------------
def test_hits_and_misses_under_uvloop(redis_server: Any, prefix: str, clock: Any) -> None:
    """uvloop's transports are not asyncio's classes: the client must work on
    the loop the proxy actually runs (the tests otherwise use asyncio's)."""

    async def main() -> None:
        shared = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
        tiered = TieredStore(local=MemoryStore(clock=clock), shared=shared, clock=clock)
        try:
            assert (await tiered.lookup(b"k", TAGS, CRED)).entry is None
            e = entry(clock(), await tiered.generations(TAGS))
            await tiered.put(b"k", e)
            found = await asyncio.gather(*(tiered.lookup(b"k", TAGS, CRED) for _ in range(50)))
            assert all(f.entry == e for f in found)
            assert tiered.local_hits == 50
            assert (await shared.lookup(b"k", TAGS, CRED)).entry == e
            assert shared.stats()["faults"] == 0
        finally:
            await tiered.aclose()

    uvloop.run(main())


# -- handshakes ------------------------------------------------------------------
async def test_acl_user_and_password(fresh_redis: Any, prefix: str, clock: Any) -> None:
    """A user restricted to the prefix with the documented permissions."""
    r = redis.Redis(port=fresh_redis.port)
    try:
        r.acl_setuser(
            "cache",
            enabled=True,
            passwords=["+s3cret"],
            keys=[f"{prefix}*"],
            commands=["+@read", "+@write", "+@scripting", "+info", "+ping", "+scan"],
        )
        r.acl_setuser("default", enabled=False)
    finally:
        r.close()
    url = f"redis://cache:s3cret@127.0.0.1:{fresh_redis.port}/0"
    store = RedisStore(url, prefix=prefix, clock=clock, timeout=1.0)
    wrong = RedisStore(url.replace("s3cret", "nope"), prefix=prefix, clock=clock, timeout=1.0)
    try:
        e = entry(clock(), await store.generations(TAGS))
        await store.put(b"k", e)
        assert (await store.lookup(b"k", TAGS, CRED)).entry == e
        assert (await store.probe(b"k", TAGS, CRED))[0] is not None
        with pytest.raises(StoreError, match="unavailable"):
            await wrong.lookup(b"k", TAGS, CRED)
        assert wrong.circuit.is_open  # a refused AUTH is a connection fault
    finally:
        await store.aclose()
        await wrong.aclose()


async def test_requirepass_and_database(tmp_path: Path, prefix: str, clock: Any) -> None:
    """Password only (AUTH <password>) and a database other than 0 (SELECT):
    keys the hit path writes land in that database."""
    server = servers.RedisServer(tmp_path / "pw").start()
    assert server.command("CONFIG", "SET", "requirepass", "pw") == "+OK"
    store = RedisStore(
        f"redis://:pw@127.0.0.1:{server.port}/3", prefix=prefix, clock=clock, timeout=1.0
    )
    r3 = redis.Redis(port=server.port, password="pw", db=3)
    r0 = redis.Redis(port=server.port, password="pw", db=0)
    try:
        await store.generations(TAGS)  # the lean client only
        assert r3.exists(f"{prefix}g:jobs")
        assert not r0.exists(f"{prefix}g:jobs")
    finally:
        r3.close()
        r0.close()
        await store.aclose()
        server.stop()


async def test_unix_socket_selects_the_database(tmp_path: Path, prefix: str, clock: Any) -> None:
    sock = tmp_path / "r.sock"
    server = servers.RedisServer(
        tmp_path / "unix", args=["--unixsocket", str(sock), "--unixsocketperm", "700"]
    ).start()
    store = RedisStore(f"unix://{sock}?db=2", prefix=prefix, clock=clock, timeout=1.0)
    r = redis.Redis(unix_socket_path=str(sock), db=2)
    try:
        e = entry(clock(), await store.generations(TAGS))
        assert r.exists(f"{prefix}g:user:alice")
        await store.put(b"k", e)
        version, gens, _ = await store.probe(b"k", TAGS, CRED)
        assert version is not None
        assert gens == e.generations
    finally:
        r.close()
        await store.aclose()
        server.stop()


def test_endpoints_parse_like_redis_py() -> None:
    ep = Endpoint.from_url("redis://u:p%40ss@h:6380/4")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.path) == (
        "h",
        6380,
        4,
        "u",
        "p@ss",
        None,
    )
    assert Endpoint.from_url("unix:///run/r.sock?db=5").path == "/run/r.sock"
    assert Endpoint.from_url("rediss://h/0?ssl_cert_reqs=none").ssl is not None
    assert Endpoint.from_url("redis://h").ssl is None


# -- scripts and server changes ---------------------------------------------------
async def test_noscript_on_the_hit_path_reloads_and_succeeds(
    redis_server: Any, prefix: str, clock: Any
) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0)
    try:
        e = entry(clock(), await store.generations(TAGS))
        await store.put(b"k", e)
        for call in ("probe", "lookup", "generations"):
            assert redis_server.command("SCRIPT", "FLUSH") == "+OK"
            if call == "probe":
                assert (await store.probe(b"k", TAGS, CRED))[0] is not None
            elif call == "lookup":
                assert (await store.lookup(b"k", TAGS, CRED)).entry == e
            else:
                assert await store.generations(TAGS) == e.generations
        assert store.stats()["faults"] == 0
        assert not store.circuit.is_open
    finally:
        await store.aclose()


async def test_a_restart_from_a_snapshot_is_seen_by_the_local_tier(
    fresh_redis: Any, prefix: str, clock: Any, mono: Any
) -> None:
    """The probe's connection is new after a restart: it must renew the
    epoch (server check) and load its script, and the local copy, which Redis
    restored from the snapshot, must not be served."""
    shared = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0, monotonic=mono)
    tiered = TieredStore(local=MemoryStore(clock=clock), shared=shared, clock=clock, monotonic=mono)
    try:
        await tiered.put(b"k", entry(clock(), await tiered.generations(TAGS)))
        assert (await tiered.lookup(b"k", TAGS, CRED)).entry is not None
        assert fresh_redis.command("SAVE") == "+OK"
        fresh_redis.kill()
        fresh_redis.start()
        found = await tiered.lookup(b"k", TAGS, CRED)  # dead connection: tried again
        assert found.entry is None
        assert shared.server_changes == 1
        assert shared.stats()["faults"] == 0
    finally:
        await tiered.aclose()


# -- faults ----------------------------------------------------------------------
async def test_a_server_killed_under_load_only_ever_raises_store_error(
    fresh_redis: Any, prefix: str, clock: Any, mono: Any
) -> None:
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=0.5, monotonic=mono)
    try:
        e = entry(clock(), await store.generations(TAGS))
        await store.put(b"k", e)
        outcomes: list[str] = []

        async def client() -> None:
            for _ in range(300):
                try:
                    found = await store.lookup(b"k", TAGS, CRED)
                except StoreError:
                    outcomes.append("error")
                else:
                    assert found.entry == e
                    outcomes.append("hit")
                await asyncio.sleep(0)

        clients = [asyncio.create_task(client()) for _ in range(20)]
        for _ in range(10_000):  # until the load is well under way
            if outcomes.count("hit") >= 200:
                break
            await asyncio.sleep(0.001)
        fresh_redis.kill()
        await asyncio.gather(*clients)  # anything but StoreError fails the test here
        assert "error" in outcomes
        assert store.circuit.is_open
        fresh_redis.start()
        mono.advance(2)
        found = await store.lookup(b"k", TAGS, CRED)  # the probe: Redis is empty now
        assert found.entry is None
        assert not store.circuit.is_open
    finally:
        await store.aclose()


async def test_a_sleeping_server_is_a_timeout_then_a_circuit(
    debug_redis: servers.RedisServer, prefix: str, clock: Any, mono: Any
) -> None:
    store = RedisStore(debug_redis.url, prefix=prefix, clock=clock, timeout=0.05, monotonic=mono)
    try:
        e = entry(clock(), await store.generations(TAGS))
        await store.put(b"k", e)
        sleeper = stall(debug_redis, 1.0)
        try:
            await asyncio.sleep(0.05)  # the server is inside DEBUG SLEEP now
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(StoreError, match="timed out"):
                await store.lookup(b"k", TAGS, CRED)
            assert loop.time() - started < 0.5  # bounded by the timeout, not the sleep
            assert not store.circuit.is_open  # one timeout is a strike
            for _ in range(store.circuit.threshold - 1):
                with pytest.raises(StoreError, match="timed out"):
                    await store.probe(b"k", TAGS, CRED)
            assert store.circuit.is_open
            with pytest.raises(StoreError, match="circuit open"):
                await store.lookup(b"k", TAGS, CRED)
        finally:
            sleeper.recv(64)  # +OK once the sleep is over
            sleeper.close()
        mono.advance(2)
        assert (await store.lookup(b"k", TAGS, CRED)).entry == e
        assert not store.circuit.is_open
    finally:
        await store.aclose()


async def test_concurrent_lookups_share_few_connections(
    fresh_redis: Any, prefix: str, clock: Any
) -> None:
    """Beyond max_connections requests are pipelined, never queued nor
    refused; the number of connections stays bounded."""
    store = RedisStore(fresh_redis.url, prefix=prefix, clock=clock, timeout=1.0, max_connections=3)
    r = redis.Redis(port=fresh_redis.port)
    try:
        e = entry(clock(), await store.generations(TAGS))
        await store.put(b"k", e)
        before = int(r.info("clients")["connected_clients"])
        found = await asyncio.gather(
            *(store.lookup(b"k", TAGS, CRED) for _ in range(300)),
            *(store.probe(b"k", TAGS, bytes([i]) * 32) for i in range(100)),
        )
        assert all(f.entry == e for f in found[:300])
        assert all(p[0] is not None for p in found[300:])
        during = int(r.info("clients")["connected_clients"])
        assert during - before <= 3
    finally:
        r.close()
        await store.aclose()


async def test_a_cancelled_request_does_not_shift_the_replies(
    redis_server: Any, prefix: str, clock: Any
) -> None:
    """Requests share connections: the reply of a cancelled one must be
    dropped, not handed to the next request on that connection."""
    store = RedisStore(redis_server.url, prefix=prefix, clock=clock, timeout=1.0, max_connections=1)
    try:
        a = entry(clock(), await store.generations(TAGS), body=b"a")
        b = entry(clock(), a.generations, body=b"b")
        await store.put(b"a", a)
        await store.put(b"b", b)
        for _ in range(20):
            doomed = asyncio.create_task(store.lookup(b"a", TAGS, CRED))
            await asyncio.sleep(0)  # sent (or about to be), not answered
            doomed.cancel()
            assert (await store.lookup(b"b", TAGS, CRED)).entry == b
            assert (await store.lookup(b"a", TAGS, CRED)).entry == a
        assert not store.circuit.is_open
    finally:
        await store.aclose()


async def test_pool_round_trips_and_error_replies(redis_server: Any) -> None:
    """The pool alone: pipelined commands, error replies returned in place
    (the connection stays usable), a closed pool refuses work."""
    pool = RespPool(
        Endpoint.from_url(redis_server.url),
        max_connections=2,
        timeout=1.0,
        connect_timeout=1.0,
        guard=2.0,
    )
    try:
        replies = await pool.execute(
            pack([b"PING"]) + pack([b"NOSUCHCOMMAND"]) + pack([b"ECHO", b"x"]), 3
        )
        assert replies[0] == b"PONG"
        assert isinstance(replies[1], redis.ResponseError)
        assert replies[2] == b"x"
        assert await pool.execute(pack([b"ECHO", b"\r\n\x00"]), 1) == [b"\r\n\x00"]
    finally:
        await pool.aclose()
    with pytest.raises(redis.ConnectionError):
        await pool.execute(pack([b"PING"]), 1)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_long_loop_turn_is_not_a_redis_timeout(
    debug_redis: servers.RedisServer, prefix: str, clock: Any, loop_kind: str
) -> None:
    """The proxy's loop can be busy (or descheduled) for longer than the
    Redis timeout between making a request and sending it.  The timeout
    counts from the send: Redis answering within it is no fault."""

    async def main() -> None:
        store = RedisStore(debug_redis.url, prefix=prefix, clock=clock, timeout=0.1)
        try:
            await store.generations(TAGS)  # connected, scripts loaded
            await asyncio.sleep(0.6)  # the handshake's (longer) timer has run out
            sleeper = stall(debug_redis, 0.3)  # Redis answers at +0.3 s
            try:
                request = asyncio.ensure_future(store.generations(TAGS))
                # The request is made, then the loop is stuck before it can
                # send it: it goes out at +0.25 s.
                asyncio.get_running_loop().call_soon(time.sleep, 0.25)
                assert len(await request) == len(TAGS)
            finally:
                sleeper.recv(64)
                sleeper.close()
            assert store.stats()["faults"] == 0
        finally:
            await store.aclose()

    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())
