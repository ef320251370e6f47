"""Big lists: a miss streams to its clients while it fills the cache; a body
over max_entry_bytes streams through without being kept; a broken body is
never stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cacheproxy.core.rules import RuleSet
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.core.conftest import auth
from tests.core.servers import serve

RULES = RuleSet.from_toml('[[rule]]\nname="big"\npath="/slurm/{v}/big"\nttl=60\ntags=["big"]\n')
CHUNK = b'{"errors": [], "jobs": [' + b" " * (1024 * 1024 - 24)
TAIL = b"]}"


class SlowBigUpstream:
    """Sends a body of ``chunks`` MiB with a Content-Length, holding after the
    first MiB until ``release`` is set (or breaking there, if ``truncate``)."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.release = asyncio.Event()
        self.served = 0
        self.truncate = False
        self.framed = True
        """Send a Content-Length (else the body is chunked: its size is
        known only once it has streamed)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.served += 1
        length = len(CHUNK) * self.chunks + len(TAIL)
        headers = [(b"content-type", b"application/json")]
        if self.framed:
            headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await self.release.wait()
        if self.truncate:
            raise RuntimeError("upstream dies mid-body")
        for _ in range(self.chunks - 1):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": TAIL})


@pytest.fixture
async def big() -> AsyncIterator[tuple[SlowBigUpstream, str]]:
    upstream = SlowBigUpstream(chunks=8)
    async with serve(upstream, lifespan="off") as up:
        app = CacheProxyApp(Settings(upstream=up, max_entry_bytes=16 * 1024 * 1024), rules=RULES)
        async with serve(app) as url:
            yield upstream, url


async def test_miss_streams_to_first_client_then_hits(big: tuple[SlowBigUpstream, str]) -> None:
    upstream, url = big
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        async with c.stream("GET", "/slurm/v0.0.43/big", headers=auth("alice")) as r:
            chunks = r.aiter_raw()
            first = await anext(chunks)
            # the client has bytes while upstream is still holding the rest
            assert first
            assert not upstream.release.is_set()
            upstream.release.set()
            rest = b"".join([c async for c in chunks])
        body = first + rest
        assert body == CHUNK * 8 + TAIL
        hit = await c.get("/slurm/v0.0.43/big", headers=auth("alice"))
        assert hit.headers["cache-status"].startswith("cacheproxy; hit")
        assert hit.content == body
    assert upstream.served == 1


@pytest.mark.parametrize("framed", [True, False], ids=["content-length", "chunked"])
async def test_too_big_streams_through_unstored_and_is_counted(framed: bool) -> None:
    """An answer over max_entry_bytes reaches its client byte for byte, is
    not stored (the next request goes upstream again) and is counted by rule,
    in the stats, the metrics and the status page's data."""
    upstream = SlowBigUpstream(chunks=3)
    upstream.framed = framed
    upstream.release.set()
    async with serve(upstream, lifespan="off") as up:
        app = CacheProxyApp(
            Settings(upstream=up, max_entry_bytes=1024 * 1024, max_bytes=64 * 1024 * 1024),
            rules=RULES,
        )
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            for _ in range(2):
                r = await c.get("/slurm/v0.0.43/big", headers=auth("alice"))
                assert r.content == CHUNK * 3 + TAIL
                assert r.headers["cache-status"] == "cacheproxy; fwd=miss"
            metrics = (await c.get("/_cacheproxy/metrics")).text
            stats = (await c.get("/_cacheproxy/stats")).json()
    assert upstream.served == 2
    assert app.stats.too_big == {"big": 2}
    assert 'cacheproxy_too_big_to_cache_total{route="big"} 2.0' in metrics
    assert stats["too_big_by_route"] == {"big": 2}


async def test_an_answer_within_max_entry_bytes_is_not_counted_too_big() -> None:
    upstream = SlowBigUpstream(chunks=3)
    upstream.release.set()
    async with serve(upstream, lifespan="off") as up:
        app = CacheProxyApp(Settings(upstream=up), rules=RULES)  # the defaults
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            for _ in range(2):
                r = await c.get("/slurm/v0.0.43/big", headers=auth("alice"))
                assert r.content == CHUNK * 3 + TAIL
    assert upstream.served == 1
    assert not app.stats.too_big


async def test_broken_body_is_never_stored(big: tuple[SlowBigUpstream, str]) -> None:
    upstream, url = big
    upstream.truncate = True
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        task = asyncio.create_task(c.get("/slurm/v0.0.43/big", headers=auth("alice")))
        await asyncio.sleep(0.2)
        upstream.release.set()
        with pytest.raises(httpx.HTTPError):
            await task  # the client sees a broken response, never a complete-looking one
        upstream.truncate = False
        r = await c.get("/slurm/v0.0.43/big", headers=auth("alice"))
        assert r.status_code == 200
        assert r.content == CHUNK * 8 + TAIL
        assert "hit" not in r.headers["cache-status"].split(";")[1]
