"""The fair queue in front of slurmrestd (upstream/protect.py ``Limiter``):
waiting requests are served by cost and by user in turn, not first come
first served; the bounds (max_queue, queue_timeout) are those of
test_protect.py.  Order is observed, never time: each test holds every slot,
queues requests, then frees one slot at a time and records who got it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cacheproxy.core import policy
from cacheproxy.core.rules import COST_CLASSES, RuleSet
from cacheproxy.stats import Stats
from cacheproxy.upstream.base import (
    BufferedResponse,
    UpstreamBusy,
    UpstreamRequest,
    UpstreamUnavailable,
)
from cacheproxy.upstream.fairqueue import Limiter
from cacheproxy.upstream.protect import ProtectedTransport

CHEAP, LIST, SLURMDB = COST_CLASSES["cheap"], COST_CLASSES["list"], COST_CLASSES["slurmdb"]


class Order:
    """Queues named requests on a limiter that is full, then frees slots
    one by one and returns the names in the order they got one."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.served: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.took = asyncio.Event()
        self.holding = [1] * limiter.limit
        """The cost of each slot held, oldest first (``full`` took them at 1)."""

    async def queue(self, name: str, user: str, cost: int) -> None:
        async def wait() -> None:
            await self.limiter.acquire(user, cost)
            self.served.append(name)
            self.holding.append(cost)
            self.took.set()

        self.tasks.append(asyncio.create_task(wait()))
        await asyncio.sleep(0)  # in line before the next one

    async def release(self, n: int) -> list[str]:
        """Free ``n`` slots, one at a time, each taken before the next frees."""
        for _ in range(n):
            self.took.clear()
            self.limiter.release(self.holding.pop(0))
            await asyncio.wait_for(self.took.wait(), 5)
        return self.served


async def full(limit: int = 1, max_queue: int = 1000) -> Order:
    limiter = Limiter(limit, max_queue=max_queue, timeout=60)
    for _ in range(limit):
        await limiter.acquire()
    return Order(limiter)


async def test_heavy_slurmdb_reader_delays_another_users_ping_by_one_slot_at_most() -> None:
    """alice has 50 slurmdbd reads waiting; bob's ping, queued after all of
    them, gets the second slot freed (the first went to alice's turn)."""
    order = await full()
    for i in range(50):
        await order.queue(f"alice-db{i}", "name:alice", SLURMDB)
    await order.queue("bob-ping", "name:bob", CHEAP)
    served = await order.release(2)
    assert served == ["alice-db0", "bob-ping"]
    await order.release(49)
    assert served[2:] == [f"alice-db{i}" for i in range(1, 50)]


async def test_many_users_slurmdb_reads_do_not_hold_a_ping() -> None:
    """Fifty users with one slurmdbd read each: a ping still waits for at
    most one of them (cost first, then users)."""
    order = await full()
    for i in range(50):
        await order.queue(f"u{i}-db", f"name:u{i}", SLURMDB)
    await order.queue("bob-ping", "name:bob", CHEAP)
    served = await order.release(2)
    assert served == ["u0-db", "bob-ping"]


async def test_users_are_served_round_robin_within_a_class() -> None:
    order = await full()
    for i in range(3):
        await order.queue(f"alice{i}", "name:alice", LIST)
    for i in range(3):
        await order.queue(f"bob{i}", "name:bob", LIST)
    await order.queue("carol0", "name:carol", LIST)
    served = await order.release(7)
    assert served == ["alice0", "bob0", "carol0", "alice1", "bob1", "alice2", "bob2"]


async def test_cost_classes_share_turns_by_cost() -> None:
    """With every class waiting, a turn is worth 16 units: 16 cheap
    requests, 4 lists, 1 slurmdbd read; the expensive class is never starved."""
    order = await full()
    for i in range(2):
        await order.queue(f"db{i}", "name:a", SLURMDB)
    for i in range(6):
        await order.queue(f"list{i}", "name:a", LIST)
    for i in range(20):
        await order.queue(f"ping{i}", "name:a", CHEAP)
    served = await order.release(28)
    assert served == [
        "db0",
        *(f"list{i}" for i in range(4)),
        *(f"ping{i}" for i in range(16)),
        "db1",
        "list4",
        "list5",
        *(f"ping{i}" for i in range(16, 20)),
    ]


async def test_one_user_cost_order_cheap_first_after_the_current_turn() -> None:
    """One user (a portal's service account): a ping queued behind lists and
    slurmdbd reads overtakes all but the turn in progress."""
    order = await full()
    await order.queue("list0", "name:portal", LIST)
    await order.queue("db0", "name:portal", SLURMDB)
    await order.queue("list1", "name:portal", LIST)
    await order.queue("ping", "name:portal", CHEAP)
    served = await order.release(4)
    assert served == ["list0", "list1", "db0", "ping"]


async def test_a_waiter_that_gave_up_is_skipped() -> None:
    """A waiter that gave up is skipped: its user's turn, unspent, goes to
    that user's next request; nothing leaks."""
    order = await full()
    await order.queue("a0", "name:a", LIST)
    await order.queue("a1", "name:a", LIST)
    await order.queue("b0", "name:b", LIST)
    order.tasks[0].cancel()
    await asyncio.sleep(0)
    assert order.limiter.queued == 2
    served = await order.release(2)
    assert served == ["a1", "b0"]
    order.limiter.release(order.holding.pop(0))
    assert order.limiter.in_use == 0
    assert order.limiter.queued == 0


async def test_queue_limit_counts_waiters_of_every_user() -> None:
    limiter = Limiter(1, max_queue=2, timeout=60)
    await limiter.acquire()
    waiting = [
        asyncio.create_task(limiter.acquire("name:a", SLURMDB)),
        asyncio.create_task(limiter.acquire("name:b", CHEAP)),
    ]
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusy):
        await limiter.acquire("name:c", CHEAP)  # a new user is refused too
    for _ in waiting:
        limiter.release()
    await asyncio.gather(*waiting)
    assert limiter.queued == 0


async def test_expiry_keeps_order_and_frees_the_lines() -> None:
    limiter = Limiter(1, max_queue=10, timeout=0.01)
    await limiter.acquire()
    waiting = [
        asyncio.create_task(limiter.acquire(user, cost))
        for user, cost in (("name:a", SLURMDB), ("name:b", CHEAP), ("name:a", CHEAP))
    ]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, UpstreamBusy) for r in results)
    assert limiter.queued == 0
    limiter.release()
    await limiter.acquire("name:c", LIST)  # nothing stale left in line
    assert limiter.in_use == 1


class _Record:
    """An inner transport that records who was sent (the slot is held until
    the response is closed)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        self.sent.append(request.target)
        return BufferedResponse(status=200, headers=[], body=b"ok")

    async def aclose(self) -> None:
        return None


async def test_transport_queues_by_the_requests_user_and_cost() -> None:
    """ProtectedTransport takes each request's ``user`` and ``cost``; a write
    waits its user's turn like a read."""
    inner = _Record()
    t = ProtectedTransport(inner, max_concurrent=1, max_queue=100, queue_timeout=60)
    first = await t.send(UpstreamRequest("GET", "/first", [], user="name:a", cost=LIST))

    def req(method: str, target: str, user: str, cost: int) -> UpstreamRequest:
        return UpstreamRequest(method, target, [], user=user, cost=cost)

    tasks = []
    for r in (
        req("GET", "/slurmdb/a1", "name:a", SLURMDB),
        req("GET", "/slurmdb/a2", "name:a", SLURMDB),
        req("POST", "/submit/b", "name:b", LIST),
        req("GET", "/ping/c", "name:c", CHEAP),
    ):
        tasks.append(asyncio.create_task(t.send(r)))
        await asyncio.sleep(0)
    await first.aclose()
    pending = set(tasks)
    while pending:  # each answer closed frees the slot for the next in turn
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        await done.pop().result().aclose()
    assert inner.sent == ["/first", "/slurmdb/a1", "/submit/b", "/ping/c", "/slurmdb/a2"]
    assert t.limiter.in_use == 0


def test_rules_give_each_route_its_cost_class() -> None:
    rules = RuleSet.default()

    def cost(method: str, path: str) -> int:
        return policy.upstream_cost(rules.match(method, tuple(path.strip("/").split("/"))))

    assert cost("GET", "/slurm/v0.0.43/ping") == CHEAP
    assert cost("GET", "/slurm/v0.0.43/node/n1") == CHEAP
    assert cost("GET", "/slurm/v0.0.43/job/12") == CHEAP
    assert cost("DELETE", "/slurm/v0.0.43/job/12") == CHEAP
    assert cost("GET", "/slurm/v0.0.43/jobs") == LIST
    assert cost("GET", "/slurm/v0.0.43/nodes") == LIST
    assert cost("POST", "/slurm/v0.0.43/job/submit") == LIST
    assert cost("GET", "/slurmdb/v0.0.43/jobs") == SLURMDB
    assert cost("GET", "/slurmdb/v0.0.43/job/12") == SLURMDB
    assert cost("GET", "/slurmdb/v0.0.43/ping") == CHEAP
    assert cost("GET", "/slurmdb/v0.0.43/nothing/known") == SLURMDB  # no rule
    assert cost("GET", "/slurm/v0.0.43/nothing/known") == LIST


def test_a_rule_may_declare_its_cost_and_a_wrong_one_is_refused() -> None:
    rules = RuleSet.from_toml('[[rule]]\nname = "x"\npath = "/slurm/{v}/diag"\ncost = "slurmdb"\n')
    assert rules.rules[0].cost == "slurmdb"
    assert rules.rules[0].describe()["cost"] == "slurmdb"
    with pytest.raises(ValueError, match="cost must be one of"):
        RuleSet.from_toml('[[rule]]\nname = "x"\npath = "/slurm/{v}/diag"\ncost = "free"\n')


async def test_step_back_puts_a_throttled_user_behind_the_others() -> None:
    order = await full()
    await order.queue("a0", "name:a", LIST)
    await order.queue("a1", "name:a", LIST)
    await order.queue("b0", "name:b", LIST)
    await order.queue("a-ping", "name:a", CHEAP)
    await order.queue("c-ping", "name:c", CHEAP)
    order.limiter.step_back("name:a")
    served = await order.release(5)
    assert served == ["b0", "a0", "a1", "c-ping", "a-ping"]


RATE_LIMITED = (
    b'{"errors": [{"description": "Rate limit exceeded, please retry momentarily",'
    b' "error_number": 1014, "error": "Rate limit exceeded, please retry momentarily",'
    b' "source": "slurm_load_jobs"}], "warnings": []}'
)


class _Whole:
    """A response whose body arrived with its head (as a small error does)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        self.body = body

    async def aiter_body(self) -> AsyncIterator[bytes]:
        yield self.body

    def body_if_complete(self) -> bytes:
        return self.body

    async def aclose(self) -> None:
        return None


class _Answers:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    async def send(self, request: UpstreamRequest) -> _Whole:
        return _Whole(self.status, self.body)

    async def aclose(self) -> None:
        return None


async def test_rate_limited_answers_pass_through_and_never_open_the_breaker() -> None:
    """slurmctld's "Rate limit exceeded" (502) asks one user for less: the
    answer reaches that user byte for byte, and however many come, the
    breaker stays closed for everyone else."""
    stats = Stats()
    t = ProtectedTransport(
        _Answers(502, RATE_LIMITED), max_concurrent=1, breaker_failures=3, stats=stats
    )
    for _ in range(10):
        resp = await t.send(UpstreamRequest("GET", "/slurm/v0.0.43/jobs", [], user="name:a"))
        assert resp.status == 502
        assert resp.body_if_complete() == RATE_LIMITED
        assert b"".join([c async for c in resp.aiter_body()]) == RATE_LIMITED
        await resp.aclose()
    assert not t.breaker.is_open
    assert stats.upstream_throttled == 10
    assert t.limiter.in_use == 0


async def test_other_502s_still_strike_and_pass_through() -> None:
    body = b'{"errors": [{"description": "Unable to contact slurm controller"}]}'
    t = ProtectedTransport(_Answers(502, body), max_concurrent=1, breaker_failures=3)
    for _ in range(3):
        resp = await t.send(UpstreamRequest("GET", "/slurm/v0.0.43/jobs", []))
        assert b"".join([c async for c in resp.aiter_body()]) == body
        await resp.aclose()
    assert t.breaker.is_open
    with pytest.raises(UpstreamUnavailable):
        await t.send(UpstreamRequest("GET", "/slurm/v0.0.43/jobs", []))


async def test_slurmdb_reads_leave_a_quarter_of_the_slots_to_cheaper_requests() -> None:
    """Slots held are not taken back: so slurmdbd reads may hold 12 of 16,
    and a ping or a list finds a slot at once while they run."""
    limiter = Limiter(16, max_queue=100, timeout=60)
    assert limiter.heavy_limit == 12
    for _ in range(12):
        await limiter.acquire("name:a", SLURMDB)
    more_db = asyncio.create_task(limiter.acquire("name:b", SLURMDB))
    await asyncio.sleep(0)
    assert not more_db.done()  # a free slot, but not for a 13th slurmdbd read
    assert limiter.queued == 1
    await limiter.acquire("name:c", CHEAP)  # at once, past the waiting read
    await limiter.acquire("name:c", LIST)
    assert limiter.in_use == 14
    limiter.release(SLURMDB)
    await more_db  # a slurmdbd read ended: the next one takes its slot
    assert limiter.in_use == 14
    for cost in (SLURMDB,) * 12 + (CHEAP, LIST):
        limiter.release(cost)
    assert limiter.in_use == 0
    assert limiter.queued == 0


async def test_with_one_slot_a_slurmdb_read_may_take_it() -> None:
    limiter = Limiter(1, max_queue=10, timeout=60)
    assert limiter.heavy_limit == 1
    await limiter.acquire("name:a", SLURMDB)
    limiter.release(SLURMDB)
    await limiter.acquire("name:a", SLURMDB)


async def test_a_full_queue_refuses_the_heaviest_user_not_the_newcomer() -> None:
    """alice fills the queue; bob's ping takes the place of alice's newest
    read (alice's gets the 503) and is served in his turn; alice's own next
    request is refused as before."""
    limiter = Limiter(1, max_queue=4, timeout=60)
    await limiter.acquire()
    alice = [asyncio.create_task(limiter.acquire("name:alice", SLURMDB)) for _ in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusy):
        await limiter.acquire("name:alice", SLURMDB)  # full, and she is the heaviest
    bob = asyncio.create_task(limiter.acquire("name:bob", CHEAP))
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusy):
        await alice[3]  # her newest gave its place
    assert limiter.queued == 4
    limiter.release(1)
    await alice[0]  # the turn in progress
    limiter.release(SLURMDB)
    await bob
    limiter.release(CHEAP)
    await alice[1]
    limiter.release(SLURMDB)
    await alice[2]
    limiter.release(SLURMDB)
    assert limiter.in_use == 0
    assert limiter.queued == 0


async def test_a_full_queue_of_equal_users_refuses_the_newcomer() -> None:
    limiter = Limiter(1, max_queue=4, timeout=60)
    await limiter.acquire()
    users = ("name:a", "name:b", "name:c", "name:d")
    waiting = [asyncio.create_task(limiter.acquire(user, LIST)) for user in users]
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusy):
        await limiter.acquire("name:e", LIST)  # nobody has two more than e
    assert not any(task.done() for task in waiting)
    for task in waiting:
        limiter.release(1 if task is waiting[0] else LIST)
        await task
    limiter.release(LIST)
    assert limiter.in_use == 0
