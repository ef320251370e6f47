"""slurmctld's rate limiting as slurmrestd's clients meet it, and the proxy in front of it.

With ``rl_enable`` a user over the bucket gets a *slow 200*: slurmctld answers
BACKOFF and the Slurm library inside slurmrestd sleeps and retries (see
cacheproxy/simulator/ratelimit.py). The proxy's part is to make a polling
user cost slurmctld one request per TTL, so the bucket never empties.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from cacheproxy.simulator.ratelimit import RateLimiter
from cacheproxy.simulator.releases import RELEASES
from tests.clients.compare import long_ttl_rules
from tests.simulator.conftest import Running, auth, started
from tests.simulator.proxied import proxy_in_front


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(clock: FakeClock, size: int = 30, rate: float = 2.0) -> RateLimiter:
    return RateLimiter(size, rate, clock=clock, sleep=clock.sleep)


async def test_bucket_then_retries_with_each_release_s_sleep() -> None:
    """30 RPCs go through at once; then each waits for a token the way the
    release's libslurm does: 1 s per retry in 23.02, n s on the n-th from 23.11."""
    for release, want in (("23.02", [1, 1, 1]), ("23.11", [1, 2]), ("25.11", [1, 2])):
        clock = FakeClock()
        rl = limiter(clock, rate=0.4)
        retries = [await rl.admit("alice", RELEASES[release]) for _ in range(30)]
        assert retries == [0] * 30
        assert clock.slept == []
        assert await rl.admit("alice", RELEASES[release]) == len(want)
        assert clock.slept == want, release
        assert rl.backoffs == len(want)


async def test_exempt_users_and_releases_before_rl_enable() -> None:
    clock = FakeClock()
    rl = limiter(clock, size=1, rate=0.1)
    for _ in range(5):
        assert await rl.admit("root", RELEASES["24.11"]) == 0
        assert await rl.admit("slurm", RELEASES["24.11"]) == 0
        assert await rl.admit("bob", RELEASES["22.05"]) == 0  # no rl_enable before 23.02
    assert await rl.admit("carol", RELEASES["24.11"]) == 0
    assert await rl.admit("carol", RELEASES["24.11"]) > 0  # per user: carol's own bucket
    assert clock.slept


@pytest.fixture
def limited() -> Iterator[Running]:
    with started(style="24.11", rate_limit=True, rl_bucket_size=2, rl_refill_rate=2.0) as s:
        yield s


def test_a_limited_user_gets_slow_200s_not_errors(limited: Running) -> None:
    with limited.client(headers=auth("user001")) as c:
        answers = [c.get("/slurm/v0.0.42/jobs") for _ in range(4)]
        assert [r.status_code for r in answers] == [200] * 4
        assert c.get("/_sim/stats").json()["rl_backoffs"] > 0
    with limited.client(headers=auth("root")) as c:
        before = c.get("/_sim/stats").json()["rl_backoffs"]
        assert all(c.get("/slurm/v0.0.42/jobs").status_code == 200 for _ in range(4))
        assert c.get("/_sim/stats").json()["rl_backoffs"] == before


def test_through_the_proxy_polling_costs_one_request_per_ttl(
    limited: Running, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """30 sequential polls and a 20-wide burst by a user whose bucket holds 2:
    one upstream GET /jobs in all, so slurmctld never has to push back."""
    tmp = tmp_path_factory.mktemp("rl-proxy")
    rules = long_ttl_rules(tmp)
    with proxy_in_front(limited.url, tmp / "proxy.log", "--config", str(rules)) as url:
        hdrs = auth("user001")
        with httpx.Client(base_url=url, headers=hdrs, timeout=30) as c:
            assert all(c.get("/slurm/v0.0.42/jobs").status_code == 200 for _ in range(30))

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, headers=hdrs, timeout=30) as ac:
                return await asyncio.gather(*(ac.get("/slurm/v0.0.42/jobs") for _ in range(20)))

        assert {r.status_code for r in asyncio.run(burst())} == {200}
    stats = httpx.get(limited.url + "/_sim/stats").json()
    assert stats["by_route"].get("GET /slurm/{v}/jobs") == 1, stats["by_route"]
    assert stats["rl_backoffs"] == 0
