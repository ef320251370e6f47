"""upstream/protect.py in isolation: the concurrency limit, its bounded queue
and the circuit breaker, against a scripted inner transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cacheproxy.upstream.base import (
    BufferedResponse,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from cacheproxy.upstream.fairqueue import Limiter
from cacheproxy.upstream.protect import ProtectedTransport

REQ = UpstreamRequest(method="GET", target="/slurm/v0.0.43/ping", headers=[])


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _BrokenBody:
    status = 200
    headers: list[tuple[bytes, bytes]] = []  # noqa: RUF012

    async def aiter_body(self) -> AsyncIterator[bytes]:
        yield b"half"
        raise UpstreamProtocolError("reset")

    def body_if_complete(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Script:
    """An inner transport answering from a list: an exception to raise, a
    status, a broken body, or an Event to wait on first."""

    def __init__(self) -> None:
        self.plan: list[object] = []
        self.sent = 0
        self.in_flight = 0
        self.peak = 0
        self.gate: asyncio.Event | None = None

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.sent += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            step = self.plan.pop(0) if self.plan else 200
            if isinstance(step, BaseException):
                raise step
            if step == "broken":
                return _BrokenBody()
            assert isinstance(step, int)
            return BufferedResponse(status=step, headers=[], body=b"ok")
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


async def drain(resp: UpstreamResponse) -> bytes:
    try:
        return b"".join([c async for c in resp.aiter_body()])
    finally:
        await resp.aclose()


async def test_limit_queue_and_busy() -> None:
    limiter = Limiter(2, max_queue=1, timeout=5)
    await limiter.acquire()
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.queued == 1
    with pytest.raises(UpstreamBusy):
        await limiter.acquire()  # the queue is full: refused at once
    limiter.release()
    await waiter  # the freed slot went straight to the one in line
    assert limiter.in_use == 2
    assert limiter.queued == 0


async def test_queue_wait_is_bounded() -> None:
    limiter = Limiter(1, max_queue=10, timeout=0.05)
    await limiter.acquire()
    with pytest.raises(UpstreamBusy):
        await limiter.acquire()
    assert limiter.queued == 0
    limiter.release()
    await limiter.acquire()  # no slot leaked by the timed-out waiter


async def test_each_waiter_times_out_at_its_own_deadline() -> None:
    """One timer serves the whole line: it re-arms for the next waiter, so a
    later waiter is neither failed early nor left waiting past its deadline."""
    limiter = Limiter(1, max_queue=10, timeout=0.1)
    await limiter.acquire()
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.05)
    second = asyncio.create_task(limiter.acquire())
    third = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    started = loop.time()
    with pytest.raises(UpstreamBusy):
        await first
    assert not second.done()  # queued 50 ms later: 50 ms still to wait
    limiter.release()  # the slot goes to the second in line, before its deadline
    await second
    with pytest.raises(UpstreamBusy):
        await third
    assert loop.time() - started < 1.0
    assert limiter.queued == 0
    limiter.release()
    assert limiter.in_use == 0


def test_queue_deadline_holds_on_a_later_loop() -> None:
    """A waiter left queued when its loop closed must not leave the next
    loop's waiters without a timer."""
    limiter = Limiter(1, max_queue=10, timeout=0.05)

    async def leave_one_waiting() -> None:
        await limiter.acquire()
        asyncio.get_running_loop().create_task(limiter.acquire())
        await asyncio.sleep(0)

    async def wait_in_line() -> None:
        with pytest.raises(UpstreamBusy):
            await asyncio.wait_for(limiter.acquire(), 5)

    with asyncio.Runner() as runner:
        runner.run(leave_one_waiting())
    with asyncio.Runner() as runner:
        runner.run(wait_in_line())


async def test_cancelled_waiter_leaks_nothing() -> None:
    limiter = Limiter(1, max_queue=10, timeout=5)
    await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[1].cancel()
    limiter.release()
    await waiters[0]
    limiter.release()
    await waiters[2]
    limiter.release()
    assert limiter.in_use == 0
    assert limiter.queued == 0


async def test_transport_never_exceeds_the_limit() -> None:
    inner = Script()
    inner.gate = asyncio.Event()
    t = ProtectedTransport(inner, max_concurrent=4, max_queue=100, queue_timeout=5)

    async def one() -> bytes:
        return await drain(await t.send(REQ))

    tasks = [asyncio.create_task(one()) for _ in range(40)]
    await asyncio.sleep(0.01)
    assert inner.in_flight == 4
    inner.gate.set()
    assert set(await asyncio.gather(*tasks)) == {b"ok"}
    assert inner.peak == 4
    assert t.limiter.in_use == 0


async def test_slot_is_held_until_the_body_is_closed() -> None:
    inner = Script()
    t = ProtectedTransport(inner, max_concurrent=1, max_queue=0)
    resp = await t.send(REQ)
    with pytest.raises(UpstreamBusy):
        await t.send(REQ)
    await resp.aclose()
    await resp.aclose()  # idempotent: releases once
    await drain(await t.send(REQ))
    assert t.limiter.in_use == 0


async def test_breaker_opens_fails_fast_probes_and_closes() -> None:
    mono = Mono()
    inner = Script()
    t = ProtectedTransport(inner, breaker_failures=3, breaker_cooldown=5, monotonic=mono)
    inner.plan = [UpstreamConnectError("refused"), UpstreamTimeout("slow"), 503]
    for expected in (UpstreamConnectError, UpstreamTimeout):
        with pytest.raises(expected):
            await t.send(REQ)
    await drain(await t.send(REQ))  # a 503 answer counts as a failure
    assert t.breaker.is_open
    sent = inner.sent
    with pytest.raises(UpstreamUnavailable) as info:
        await t.send(REQ)
    assert info.value.sent is False
    assert info.value.retry_after == 5
    assert inner.sent == sent  # failed fast: upstream never saw it
    mono.now += 5
    inner.gate = asyncio.Event()
    probe = asyncio.create_task(t.send(REQ))
    await asyncio.sleep(0)
    with pytest.raises(UpstreamUnavailable):
        await t.send(REQ)  # one probe at a time
    inner.gate.set()
    await drain(await probe)
    assert not t.breaker.is_open
    inner.gate = None
    await drain(await t.send(REQ))


async def test_failed_probe_doubles_the_cooldown() -> None:
    mono = Mono()
    inner = Script()
    t = ProtectedTransport(inner, breaker_failures=1, breaker_cooldown=2, monotonic=mono)
    inner.plan = [UpstreamConnectError("x"), UpstreamConnectError("x")]
    with pytest.raises(UpstreamConnectError):
        await t.send(REQ)
    mono.now += 2
    with pytest.raises(UpstreamConnectError):
        await t.send(REQ)  # the probe fails
    mono.now += 3
    with pytest.raises(UpstreamUnavailable):
        await t.send(REQ)  # 4 s now, not 2
    mono.now += 1
    await drain(await t.send(REQ))
    assert not t.breaker.is_open


async def test_broken_body_counts_and_successes_reset() -> None:
    inner = Script()
    t = ProtectedTransport(inner, breaker_failures=2)
    inner.plan = ["broken", 200, "broken"]
    with pytest.raises(UpstreamProtocolError):
        await drain(await t.send(REQ))
    await drain(await t.send(REQ))  # success: the count starts again
    with pytest.raises(UpstreamProtocolError):
        await drain(await t.send(REQ))
    assert not t.breaker.is_open
    assert t.breaker.consecutive == 1


async def test_breaker_off() -> None:
    inner = Script()
    t = ProtectedTransport(inner, breaker_failures=0)
    inner.plan = [UpstreamConnectError("x")] * 20
    for _ in range(20):
        with pytest.raises(UpstreamConnectError):
            await t.send(REQ)
    assert not t.breaker.is_open
