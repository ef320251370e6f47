"""Issue 14, defect 9: behind a unix-socket slurmrestd, a request without a
token never reaches it (rest_auth/local would run it as the proxy's own
user), on the fast lane and on the ASGI path alike (localauth.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.core.servers import serve
from tests.hardening.conftest import JOBS, V, auth, check, stack_settings
from tests.hardening.servers import hardened_proxy

PING = f"{V}/ping"  # no rule caches it: a GET the fast lane forwards itself
SUBMIT = f"{V}/job/submit"


@pytest.fixture
async def unix_upstream(tmp_path: Path) -> AsyncIterator[tuple[FakeSlurmrestd, str]]:
    fake = FakeSlurmrestd()
    async with serve(fake, lifespan="off", uds=str(tmp_path / "slurmrestd.sock")) as url:
        yield fake, url


async def _requests(c: httpx.AsyncClient, headers: dict[str, str]) -> list[httpx.Response]:
    return [
        check(await c.get(PING, headers=headers)),
        check(await c.get(JOBS, headers=headers)),
        check(await c.post(SUBMIT, headers=headers, json={"job": {}})),
    ]


@pytest.mark.parametrize("headers", [{}, {"X-SLURM-USER-NAME": "alice"}])
async def test_no_token_to_a_unix_upstream_is_refused_on_both_paths(
    unix_upstream: tuple[FakeSlurmrestd, str], headers: dict[str, str]
) -> None:
    fake, url = unix_upstream
    async with (
        hardened_proxy(stack_settings(url)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as c,
    ):
        for _ in range(2):  # keep-alive: each request is offered to the lane first
            for r in await _requests(c, headers):
                assert r.status_code == 401
                assert r.headers["content-type"] == "text/plain"
                assert r.content == b"Authentication failure"
        assert fake.total("") == 0  # nothing reached slurmrestd
        ok = check(await c.get(PING, headers=auth("alice")))
        assert ok.status_code == 200
        assert fake.total("GET", "/ping") == 1


async def test_the_pipeline_refuses_at_once_and_forwards_with_a_token(
    unix_upstream: tuple[FakeSlurmrestd, str],
) -> None:
    """The refusal is a step of the one pipeline: a request without a token
    is answered at once (no awaiting: the protocol writes it), while the
    same request with one is forwarded."""
    from cacheproxy.http.localauth import RequireToken
    from cacheproxy.http.pipeline import Continue, Exchange

    _, url = unix_upstream
    app = CacheProxyApp(stack_settings(url))
    await app.startup()
    try:
        served = hardening.wrap(app)
        assert any(isinstance(x, RequireToken) for x in served.steps)

        def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
            return {
                "type": "http",
                "method": "GET",
                "path": PING,
                "raw_path": PING.encode(),
                "query_string": b"",
                "headers": [(b"host", b"proxy"), *headers],
                "client": ("127.0.0.1", 5000),
                "scheme": "http",
                "http_version": "1.1",
            }

        refused = served.run(Exchange.of(scope([])))
        assert isinstance(refused, tuple)
        assert refused[0] == 401
        assert refused[2] == b"Authentication failure"
        forwarded: Any = served.run(
            Exchange.of(
                scope([(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"tok-alice")])
            )
        )
        while not isinstance(forwarded, tuple | Continue):
            forwarded = await forwarded
        assert isinstance(forwarded, tuple)
        assert forwarded[0] == 200
    finally:
        await app.shutdown()


async def test_jwt_only_unix_upstream_and_tcp_upstreams_forward_as_before(
    unix_upstream: tuple[FakeSlurmrestd, str],
) -> None:
    """``unix_upstream_jwt_only`` says slurmrestd has no rest_auth/local
    there: slurmrestd itself answers (here 401).  Over TCP local auth never
    applies, so nothing changes either."""
    fake, url = unix_upstream
    async with (
        hardened_proxy(stack_settings(url, unix_upstream_jwt_only=True)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as c,
    ):
        assert check(await c.get(PING)).status_code == 401
        assert fake.total("GET", "/ping") == 1
    tcp = FakeSlurmrestd()
    async with (
        serve(tcp, lifespan="off") as tcp_url,
        hardened_proxy(stack_settings(tcp_url)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as c,
    ):
        assert check(await c.get(PING)).status_code == 401
        assert tcp.total("GET", "/ping") == 1


def test_the_setting_is_documented_and_loads() -> None:
    from cacheproxy.settings import load

    s = load(env={"CACHEPROXY_UNIX_UPSTREAM_JWT_ONLY": "yes"})
    assert s.unix_upstream_jwt_only is True
    assert Settings().unix_upstream_jwt_only is False
    doc = (Path(__file__).resolve().parents[2] / "docs" / "hardening.md").read_text()
    assert "unix_upstream_jwt_only" in doc
