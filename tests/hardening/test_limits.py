"""Request limits on the real listener: URL and head size (414/431), body
size (413), slow clients (408, keep-alive), open connections (503)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cacheproxy.core import errors
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.hardening.conftest import FIGURES, stack_settings
from tests.hardening.rawhttp import exchange, request
from tests.hardening.servers import Proxy, hardened_proxy

LIMITS = {
    "max_url_bytes": 1024,
    "max_header_bytes": 4096,
    "max_body_bytes": 2000,
    "header_timeout": 0.5,
    "keep_alive_timeout": 1,
}


@pytest.fixture
async def proxy(fake_upstream: tuple[FakeSlurmrestd, int]) -> AsyncIterator[Proxy]:
    _, port = fake_upstream
    async with hardened_proxy(stack_settings(f"http://127.0.0.1:{port}", **LIMITS)) as p:
        yield p


def count() -> None:
    FIGURES["oversized or slow requests tried"] += 1


async def test_url_too_long_is_414(proxy: Proxy, fake_upstream: tuple[FakeSlurmrestd, int]) -> None:
    r = await exchange(proxy.port, request(target="/slurm/v0.0.43/jobs?x=" + "a" * 2000))
    assert r.status == 414
    assert r.error() == errors.URL_TOO_LONG.error
    assert r.closed
    assert fake_upstream[0].total() == 0
    count()


@pytest.mark.parametrize("shape", ["few-large", "many-small", "one-huge"])
async def test_head_too_large_is_431(proxy: Proxy, shape: str) -> None:
    headers = {
        "few-large": [(f"X-Big-{i}", "v" * 1000) for i in range(6)],
        "many-small": [(f"X-{i}", "1") for i in range(2000)],
        "one-huge": [("X-Huge", "h" * 1_000_000)],
    }[shape]
    r = await exchange(proxy.port, request(headers=headers))
    assert r.status == 431
    assert r.error() == errors.HEAD_TOO_LARGE.error
    assert r.closed
    count()


async def test_big_but_allowed_head_works(proxy: Proxy) -> None:
    r = await exchange(proxy.port, request(headers=[("X-Pad", "p" * 3000)]), until_closed=False)
    assert r.status == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_too_large_is_413(
    proxy: Proxy, fake_upstream: tuple[FakeSlurmrestd, int], framing: str
) -> None:
    body = b"x" * 5000
    if framing == "chunked":
        hdrs = [("Transfer-Encoding", "chunked")]
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        hdrs = [("Content-Length", str(len(body)))]
        payload = body
    raw = request("POST", "/slurm/v0.0.43/job/submit", hdrs, payload)
    r = await exchange(proxy.port, raw, until_closed=False)
    assert r.status == 413
    assert fake_upstream[0].total("POST") == 0
    count()


async def test_slow_head_gets_408(proxy: Proxy) -> None:
    r = await exchange(proxy.port, b"GET /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n", wait=5)
    assert r.status == 408
    assert r.closed
    assert r.seconds < 4
    count()


async def test_slowloris_trickle_gets_408(proxy: Proxy) -> None:
    head = request()
    pieces = [(head[i : i + 1], 0.05) for i in range(len(head))]  # about 7 s if allowed
    r = await exchange(proxy.port, pieces, wait=5)
    assert r.closed
    assert r.status == 408
    assert r.seconds < 5
    count()


async def test_silent_connection_is_closed(proxy: Proxy) -> None:
    r = await exchange(proxy.port, b"", wait=5)
    assert r.closed
    assert r.data == b""
    assert r.seconds < 4
    count()


async def test_idle_keep_alive_is_closed(proxy: Proxy) -> None:
    r = await exchange(proxy.port, request(), wait=5)
    assert r.status == 200
    assert r.closed
    assert r.seconds < 4


async def test_keep_alive_expiry_is_its_own_and_spares_a_head_in_progress(
    fake_upstream: tuple[FakeSlurmrestd, int],
) -> None:
    """keep_alive_timeout (1 s) closes an idle connection well before
    header_timeout (10 s) would; a next request that began before the expiry
    and is still arriving after it is answered (its head has 10 s)."""
    _, port = fake_upstream
    settings = stack_settings(f"http://127.0.0.1:{port}", header_timeout=10, keep_alive_timeout=1)
    async with hardened_proxy(settings) as p:
        idle = await exchange(p.port, request(), wait=8)
        assert [s for s, _, _ in idle.responses] == [200]
        assert idle.closed
        assert 0.9 < idle.seconds < 4
        head = request()
        late = await exchange(p.port, [(head, 0.0), (head[:10], 0.7), (head[10:], 0.8)], wait=8)
        assert [s for s, _, _ in late.responses] == [200, 200]
        assert late.closed
        assert 2.4 < late.seconds < 6  # closed 1 s after the second answer


async def test_pipelined_requests_survive_the_head_timer(proxy: Proxy) -> None:
    r = await exchange(proxy.port, request() * 3, wait=2)
    assert [s for s, _, _ in r.responses] == [200, 200, 200]


async def test_too_many_connections_is_503(fake_upstream: tuple[FakeSlurmrestd, int]) -> None:
    _, port = fake_upstream
    settings = stack_settings(f"http://127.0.0.1:{port}", max_connections=3, header_timeout=10)
    async with hardened_proxy(settings) as p:
        idle = [await asyncio.open_connection("127.0.0.1", p.port) for _ in range(3)]
        await asyncio.sleep(0.05)
        r = await exchange(p.port, request(), until_closed=False)
        assert r.status == 503
        assert r.error() == errors.TOO_MANY_CONNECTIONS.error  # slurmrestd's shape, not text
        assert r.responses[0][1][b"retry-after"] == b"1"
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.05)
        r = await exchange(p.port, request(), until_closed=False)
        assert r.status == 200
    count()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/slurm/v0.0.43/jobs"),  # cached: planned (core/plan.py)
        ("GET", "/slurm/v0.0.43/ping"),  # not cached: planned, then forwarded
        ("POST", "/slurm/v0.0.43/job/submit"),  # a write: parsed for forwarding
    ],
)
async def test_max_url_bytes_above_8192_is_the_limit_everywhere(
    fake_upstream: tuple[FakeSlurmrestd, int], method: str, path: str
) -> None:
    """The setting reaches every check of the target's length: a 10,000-byte
    target passes at max_url_bytes=16384 (it was refused 400 by a limit of
    8192 hard-coded in the core); above the setting it is 414, upstream never
    asked."""
    fake, port = fake_upstream
    limits = {**LIMITS, "max_url_bytes": 16384, "max_header_bytes": 32768}
    async with hardened_proxy(stack_settings(f"http://127.0.0.1:{port}", **limits)) as p:
        target = path + "?x=" + "a" * (10_000 - len(path) - 3)
        assert len(target) == 10_000
        before = fake.total(method)
        r = await exchange(p.port, request(method, target), until_closed=False)
        assert r.status not in (400, 414), r.error()
        assert fake.total(method) == before + 1
        assert fake.queries[-1] == b"x=" + b"a" * (10_000 - len(path) - 3)

        r = await exchange(p.port, request(method, path + "?x=" + "a" * 16_400))
        assert r.status == 414
        assert r.error() == errors.URL_TOO_LONG.error
        assert fake.total(method) == before + 1
