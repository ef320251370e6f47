"""Upstream faults injected at the TCP level, against the real stack.

fake slurmrestd (uvicorn) <- fault proxy <- cacheproxy (uvicorn, hardened,
real aiohttp transport) <- httpx.  Each test asserts the three things a
proxy in front of the controller owes its clients under faults: never a 500
of its own, never a truncated body stored (the next good answer is a full
miss, not a hit of broken bytes), and recovery without anyone's help.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import httpx
import orjson
import pytest

from cacheproxy.core import errors
from tests.core.fake_slurmrestd import Job
from tests.hardening.conftest import FIGURES, JOBS, Stack, V, auth, check, stack_settings
from tests.hardening.servers import hardened_proxy

PARTITIONS = f"{V}/partitions"
NODES = f"{V}/nodes"


def cache_status(r: httpx.Response) -> str:
    return r.headers.get("cache-status", "")


def is_ours(r: httpx.Response, err: errors.ProxyError) -> bool:
    if r.status_code != err.status:
        return False
    doc = r.json()
    return bool(
        doc["errors"][0]["source"] == "cacheproxy" and doc["errors"][0]["error"] == err.error
    )


async def recover(c: httpx.AsyncClient, path: str = f"{V}/ping", user: str = "alice") -> float:
    """Poll (an uncached path: it goes upstream) until the proxy answers 200
    again by itself; seconds it took."""
    start = time.monotonic()
    while True:
        r = check(await c.get(path, headers=auth(user)))
        if r.status_code == 200 and "detail=stale" not in cache_status(r):
            return time.monotonic() - start
        assert time.monotonic() - start < 10, f"no recovery: {r.status_code} {r.text[:200]}"
        await asyncio.sleep(0.05)


def record(stack: Stack) -> None:
    assert stack.proxy.app.stats.internal_errors == 0
    FIGURES["faults injected"] += sum(stack.faults.stats.faults.values())


@pytest.fixture
def client(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.url, timeout=10)


async def test_down_serves_stale_fails_fast_and_recovers(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    async with client as c:
        first = check(await c.get(JOBS, headers=auth("alice")))
        assert cache_status(first) == "cacheproxy; fwd=miss; stored"
        await stack.faults.set_mode("down")
        stack.clock.advance(10)  # expired: only stale_if_error can answer now
        stale = check(await c.get(JOBS, headers=auth("alice")))
        assert stale.status_code == 200
        assert cache_status(stale).startswith("cacheproxy; fwd=stale; detail=stale-if-error")
        assert int(stale.headers["age"]) >= 10
        assert stale.content == first.content
        # bob never stored anything: no stale data to stand in for him
        bob = check(await c.get(JOBS, headers=auth("bob")))
        assert bob.status_code in (502, 503)
        seen = set()
        for _ in range(6):
            r = check(await c.get(PARTITIONS, headers=auth("alice")))
            seen.add(r.status_code)
            if r.status_code == 503:
                assert is_ours(r, errors.UPSTREAM_CIRCUIT_OPEN)
                assert int(r.headers["retry-after"]) >= 1
            else:
                assert is_ours(r, errors.UPSTREAM_UNREACHABLE)
        assert seen == {502, 503}  # refused, then failing fast once the breaker opened
        w = check(await c.post(f"{V}/job/submit", headers=auth("alice"), content=b"{}"))
        assert w.status_code in (502, 503)
        await stack.faults.set_mode("pass")
        await recover(c)
        stats = stack.proxy.app.stats
        assert stats.stale_served >= 1
        assert stats.max_stale_age >= 10
        assert stats.breaker_rejected >= 1
    record(stack)


async def test_write_during_outage_disables_stale_for_its_tags(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """Read-your-writes beats availability: after a write, even one that
    failed, the invalidated lists are never served stale."""
    async with client as c:
        check(await c.get(JOBS, headers=auth("alice")))
        check(await c.get(NODES, headers=auth("alice")))
        await stack.faults.set_mode("down")
        stack.clock.advance(30)
        w = check(await c.post(f"{V}/job/submit", headers=auth("alice"), content=b"{}"))
        assert w.status_code in (502, 503)
        r = check(await c.get(JOBS, headers=auth("alice")))
        assert r.status_code in (502, 503)
        assert "stale" not in cache_status(r)
        n = check(await c.get(NODES, headers=auth("alice")))  # job-submit invalidates nodes too
        assert n.status_code in (502, 503)
        assert "stale" not in cache_status(n)
        await stack.faults.set_mode("pass")
        await recover(c)
    record(stack)


async def test_hung_upstream_times_out_then_fails_fast(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    async with client as c:
        check(await c.get(JOBS, headers=auth("alice")))
        await stack.faults.set_mode("hung")
        statuses = []
        for _ in range(4):
            r = check(await c.get(PARTITIONS, headers=auth("alice")))
            statuses.append(r.status_code)
        assert statuses[:3] == [504, 504, 504]  # read timeout (1 s) each
        assert statuses[3] == 503  # the breaker opened: no more waiting
        stack.clock.advance(10)
        stale = check(await c.get(JOBS, headers=auth("alice")))
        assert stale.status_code == 200
        assert "stale-if-error" in cache_status(stale)
        await stack.faults.set_mode("pass")
        await recover(c)
    record(stack)


async def test_slow_upstream_within_timeout_is_just_slow(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    stack.fake.jobs = {i: Job(i, "alice") for i in range(1, 400)}
    async with client as c:
        direct = (await c.get(stack.upstream_url + JOBS, headers=auth("alice"))).content
        await stack.faults.set_mode("slow", delay=0.2)
        r = check(await c.get(JOBS, headers=auth("alice")))
        assert r.status_code == 200
        assert orjson.loads(r.content)["jobs"] == orjson.loads(direct)["jobs"]
        await stack.faults.set_mode("slow", delay=2.5)  # beyond the 1 s read timeout
        r = check(await c.get(PARTITIONS, headers=auth("alice")))
        assert is_ours(r, errors.UPSTREAM_TIMEOUT)
        await stack.faults.set_mode("pass")
        await recover(c)
    record(stack)


@pytest.mark.parametrize("mode", ["reset", "truncate"])
@pytest.mark.parametrize("jobs", [300, 15_000], ids=["buffered", "streamed"])
async def test_broken_body_is_never_stored(
    stack: Stack, client: httpx.AsyncClient, mode: str, jobs: int
) -> None:
    """A body cut mid-way (RST or FIN before Content-Length) reaches no one
    as complete: small ones become a 502, large streamed ones an aborted
    response; the next good answer is a miss with every byte."""
    stack.fake.jobs = {i: Job(i, "alice") for i in range(1, jobs + 1)}
    async with client as c:
        await stack.faults.set_mode(mode)
        try:
            r = check(await c.get(JOBS, headers=auth("alice")))
            assert is_ours(r, errors.UPSTREAM_BROKEN)
        except httpx.RemoteProtocolError:
            assert jobs > 10_000  # only a streamed body can break after its head
        await stack.faults.set_mode("pass")
        good = check(await c.get(JOBS, headers=auth("alice")))
        assert good.status_code == 200
        assert cache_status(good).startswith("cacheproxy; fwd=miss")  # not a hit
        assert len(orjson.loads(good.content)["jobs"]) == jobs
        again = check(await c.get(JOBS, headers=auth("alice")))
        assert cache_status(again).startswith("cacheproxy; hit")
        assert again.content == good.content
    record(stack)


@pytest.mark.parametrize("mode", ["reset", "truncate"])
@pytest.mark.parametrize("jobs", [300, 15_000], ids=["lane", "streamed"])
async def test_broken_pass_through_body(
    stack: Stack, client: httpx.AsyncClient, mode: str, jobs: int
) -> None:
    """A GET no rule caches, its body cut mid-way: a small answer, which the
    fast lane holds whole before sending, becomes a clean 502; a large one,
    streamed by the ASGI path, an aborted response.  Never a complete-looking
    one, and the next request goes through."""
    stack.fake.jobs = {i: Job(i, "alice") for i in range(1, jobs + 1)}
    stack.fake.last_change = 10.0**10  # the delta is the whole list
    delta = f"{JOBS}?update_time=1"
    async with client as c:
        await stack.faults.set_mode(mode)
        try:
            r = check(await c.get(delta, headers=auth("alice")))
            assert is_ours(r, errors.UPSTREAM_BROKEN)
            assert jobs < 10_000
        except httpx.RemoteProtocolError:
            assert jobs > 10_000  # only a streamed body can break after its head
        await stack.faults.set_mode("pass")
        good = check(await c.get(delta, headers=auth("alice")))
        assert good.status_code == 200
        assert cache_status(good) == "cacheproxy; fwd=request"
        assert len(orjson.loads(good.content)["jobs"]) == jobs
    assert stack.proxy.app.stats.fast_forwards == (1 if jobs < 10_000 else 0)
    record(stack)


async def test_burst_of_503s_stale_then_recovery(stack: Stack, client: httpx.AsyncClient) -> None:
    async with client as c:
        first = check(await c.get(JOBS, headers=auth("alice")))
        stack.clock.advance(10)
        await stack.faults.set_mode("burst", burst=5)
        answers = []
        for _ in range(5):
            r = check(await c.get(JOBS, headers=auth("alice")))
            answers.append(cache_status(r))
            assert r.status_code == 200
            assert r.content == first.content
        assert all("stale-if-error" in a for a in answers)
        relayed = check(await c.get(PARTITIONS, headers=auth("alice")))
        assert relayed.status_code in (503, 200)  # upstream's own 503, or the burst is over
        await stack.faults.set_mode("pass")
        await recover(c)
        fresh = check(await c.get(JOBS, headers=auth("alice")))
        assert "detail=stale" not in cache_status(fresh)
    record(stack)


async def test_connection_close_on_every_response(stack: Stack, client: httpx.AsyncClient) -> None:
    await stack.faults.set_mode("close")
    async with client as c:
        for i in range(10):
            w = check(await c.post(f"{V}/job/submit", headers=auth("alice"), content=b"{}"))
            assert w.status_code == 200
            job_id = w.json()["job_id"]
            listed = check(await c.get(JOBS, headers=auth("alice")))
            assert job_id in [j["job_id"] for j in listed.json()["jobs"]], i
        rs = await asyncio.gather(
            *(c.get(NODES, headers=auth(u)) for u in ("alice", "bob", "root") * 7)
        )
        assert {check(r).status_code for r in rs} == {200}
    assert stack.faults.stats.faults["close"] >= 20
    FIGURES["acknowledged writes checked"] += 10
    record(stack)


async def test_connect_timeout(fake_upstream: object) -> None:
    """A listener whose accept queue is full drops SYNs: connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        settings = stack_settings(f"http://127.0.0.1:{port}", connect_timeout=0.3)
        async with hardened_proxy(settings) as proxy, httpx.AsyncClient(timeout=10) as c:
            start = time.monotonic()
            r = check(await c.get(proxy.url + PARTITIONS, headers=auth("alice")))
            assert is_ours(r, errors.UPSTREAM_TIMEOUT)
            assert time.monotonic() - start < 5
            FIGURES["faults injected"] += 1
    finally:
        for s in (*fillers, listener):
            s.close()


async def test_chaos_rounds_keep_every_promise(stack: Stack, client: httpx.AsyncClient) -> None:
    """Every fault mode in turn, under mixed concurrent traffic from three
    users: no 500 of ours, no cross-user answer, read-your-writes for every
    acknowledged write, and after each round the proxy agrees with upstream."""
    users = ("alice", "bob", "root")
    acknowledged: list[int] = []
    async with client as c:

        async def get(path: str, user: str) -> httpx.Response | None:
            try:
                return check(await c.get(path, headers=auth(user)))
            except httpx.RemoteProtocolError:  # a streamed answer broke: dropped, as it must be
                FIGURES["responses aborted mid-body"] += 1
                return None

        async def reader(user: str) -> None:
            for path in (JOBS, NODES, PARTITIONS):
                r = await get(path, user)
                if r is None:
                    continue
                if r.status_code == 200 and path == JOBS:
                    doc = r.json()
                    assert doc["meta"]["client"]["user"] == user
                    if user != "root":
                        assert {j["user_name"] for j in doc["jobs"]} <= {user}

        async def writer() -> None:
            try:
                w = check(await c.post(f"{V}/job/submit", headers=auth("alice"), content=b"{}"))
            except httpx.RemoteProtocolError:  # the answer broke: not acknowledged
                FIGURES["responses aborted mid-body"] += 1
                return
            if w.status_code != 200:
                return
            job_id = w.json()["job_id"]
            acknowledged.append(job_id)
            r = await get(JOBS, "alice")
            if r is not None and r.status_code == 200:  # read-your-writes, even when stale
                assert job_id in [j["job_id"] for j in r.json()["jobs"]], cache_status(r)

        for _ in range(2):
            for mode in ("slow", "reset", "truncate", "burst", "close", "hung", "down"):
                await stack.faults.set_mode(mode, delay=0.05, burst=3)
                stack.clock.advance(7)  # expire entries: stale paths get exercised
                await asyncio.gather(writer(), *(reader(u) for u in users), writer())
                await stack.faults.set_mode("pass")
                await recover(c)
                for user in users:
                    via = check(await c.get(JOBS, headers=auth(user)))
                    direct = await c.get(stack.upstream_url + JOBS, headers=auth(user))
                    assert via.status_code == 200
                    assert via.json()["jobs"] == direct.json()["jobs"], (mode, user)
        everything = {j["job_id"] for j in (await c.get(JOBS, headers=auth("root"))).json()["jobs"]}
        assert set(acknowledged) <= everything  # no acknowledged write lost
    FIGURES["acknowledged writes checked"] += len(acknowledged)
    record(stack)
