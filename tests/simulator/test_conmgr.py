"""slurmrestd's connection limit and worker threads (simulator/conmgr.py), and
the proxy in front of a slurmrestd at its limit.

At ``max_connections`` open connections slurmrestd stops calling accept():
a new client connects (the kernel's backlog completes the handshake) and
waits, unanswered, until a connection closes. The proxy bounds the requests
it has in flight (``--upstream-concurrency``, 16) and so the connections it
opens; below the limit, a burst queues in the proxy and nothing fails.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from cacheproxy.simulator.cli import build_parser, config_from_args
from cacheproxy.simulator.config import CostParams, SimConfig
from cacheproxy.simulator.releases import DEFAULT_MAX_CONNECTIONS, RELEASES
from tests.simulator.conftest import Running, auth, started
from tests.simulator.proxied import proxy_in_front

REQUEST = (
    b"GET /slurm/v0.0.42/ping HTTP/1.1\r\nHost: x\r\n"
    b"X-SLURM-USER-NAME: root\r\nX-SLURM-USER-TOKEN: sim-token-root\r\n\r\n"
)


def test_each_release_s_default_threads_and_connection_limit() -> None:
    for name in ("22.05", "23.02", "23.11", "24.05", "24.11"):
        assert RELEASES[name].default_threads(2) == 20, name
        assert RELEASES[name].default_threads(64) == 20, name
    # 25.05: two per CPU (8 when the CPUs cannot be counted), no cap below 1024.
    assert RELEASES["25.05"].default_threads(2) == 4
    assert RELEASES["25.05"].default_threads(64) == 128
    assert RELEASES["25.05"].default_threads(0) == 8
    # 25.11 on: two per CPU, at most 32 (THREAD_AUTO_MAX).
    for name in ("25.11", "26.05"):
        assert RELEASES[name].default_threads(2) == 4
        assert RELEASES[name].default_threads(64) == 32
    assert DEFAULT_MAX_CONNECTIONS == 124
    assert SimConfig().max_connections == 124
    assert SimConfig(style="24.11").worker_threads == 20
    assert SimConfig(style="24.11", threads=3).worker_threads == 3


def test_the_command_line_knows_which_releases_have_the_options() -> None:
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["--port", "0", "--style", "24.05", "--max-connections", "8"]))
    assert cfg.max_connections == 8
    assert config_from_args(parse(["--port", "0", "-t", "4"])).threads == 4
    with pytest.raises(ValueError, match=r"22\.05 has no such option"):
        config_from_args(parse(["--port", "0", "--style", "22.05", "--max-connections", "8"]))
    with pytest.raises(ValueError, match="2 to 1024"):
        config_from_args(parse(["--port", "0", "-t", "1"]))


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed without an answer"
        data += chunk
    return data


def test_accept_waits_at_the_limit_and_resumes_when_one_closes() -> None:
    with started(style="24.11", max_connections=2) as sim:
        first, second = _connect(sim.url), _connect(sim.url)
        for s in (first, second):
            s.sendall(REQUEST)
            assert _answer(s).startswith(b"HTTP/1.1 200")
        # Both held open (keep-alive): the third connects, sends, and waits.
        third = _connect(sim.url)
        third.sendall(REQUEST)
        third.setblocking(False)
        with pytest.raises(BlockingIOError):
            third.recv(1)
        assert sim.app.conmgr.open == 2
        third.setblocking(True)
        first.close()  # a slot frees: the third is accepted and answered
        assert _answer(third).startswith(b"HTTP/1.1 200")
        second.close()
        third.close()
        assert sim.app.conmgr.peak == 2
        assert sim.app.conmgr.deferred >= 1


def test_worker_threads_bound_the_requests_handled_at_once() -> None:
    # Each read holds the controller lock 0.1 s: 12 at once cannot all be served
    # before the others arrive, however loaded the machine.
    slow = CostParams(read_base=0.1, jitter_sigma=0.0)
    with started(style="24.11", threads=2, cost_model="realistic", cost=slow) as sim:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=sim.url, timeout=30) as c:
                answers = await asyncio.gather(
                    *(
                        c.get("/slurm/v0.0.42/jobs", headers=auth(f"user{i:03d}"))
                        for i in range(1, 13)
                    )
                )
            return [r.status_code for r in answers]

        assert asyncio.run(burst()) == [200] * 12
        stats = httpx.get(sim.url + "/_sim/stats").json()
        assert stats["threads"] == 2
        assert stats["peak_busy_workers"] == 2
        assert stats["queued_for_worker"] > 0


@pytest.fixture
def at_limit() -> Iterator[Running]:
    with started(style="24.11", max_connections=2, threads=2, cost_model="realistic") as s:
        yield s


def test_the_proxy_queues_in_front_of_a_slurmrestd_at_its_limit(
    at_limit: Running, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """40 users at once through a proxy whose upstream concurrency equals the
    daemon's connection limit: every answer a 200 from slurmrestd, none of the
    proxy's own errors, and never more connections than the daemon accepts."""
    tmp = tmp_path_factory.mktemp("conmgr-proxy")
    with proxy_in_front(at_limit.url, tmp / "proxy.log", "--upstream-concurrency", "2") as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                return await asyncio.gather(
                    *(
                        c.get("/slurm/v0.0.42/jobs", headers=auth(f"user{i:03d}"))
                        for i in range(1, 41)
                    )
                )

        answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 40
    stats = httpx.get(at_limit.url + "/_sim/stats").json()
    assert stats["peak_connections"] <= 2
    assert stats["by_route"]["GET /slurm/{v}/jobs"] == 40  # one miss per user: all went up
