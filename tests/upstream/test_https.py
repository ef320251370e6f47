"""``https://`` upstreams: a real TLS server on loopback with a throwaway CA
(trustme, built on ``cryptography``); the certificate is verified by
default, against ``upstream_ca_file`` when given, and a failed verification
is an upstream connection error (a 502 in slurmrestd's shape), never a
request sent in clear or to an unverified server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.upstream import create_transport
from cacheproxy.upstream.base import UpstreamConnectError, UpstreamRequest
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.core.servers import serve

JOBS = "/slurm/v0.0.43/jobs"
ALICE = {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": "tok-alice"}


def write_ca(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[FakeSlurmrestd, str, str]]:
    """A fake slurmrestd behind TLS with a certificate for 127.0.0.1; yields
    it, its https URL and the CA file that verifies it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    upstream = FakeSlurmrestd()
    async with serve(
        upstream, http="httptools", ssl_certfile=str(chain), ssl_keyfile=str(key)
    ) as url:
        yield upstream, url.replace("http://", "https://"), write_ca(ca, tmp_path / "ca.pem")


def request() -> UpstreamRequest:
    headers = [
        (b"host", b"127.0.0.1"),
        *((k.lower().encode(), v.encode()) for k, v in ALICE.items()),
    ]
    return UpstreamRequest("GET", JOBS, headers)


async def test_verified_against_the_ca_file(tls_upstream: tuple[FakeSlurmrestd, str, str]) -> None:
    upstream, url, ca_file = tls_upstream
    transport = create_transport(url, ca_file=ca_file)
    try:
        resp = await transport.send(request())
        body = b"".join([chunk async for chunk in resp.aiter_body()])
    finally:
        await transport.aclose()
    assert resp.status == 200
    assert b'"jobs"' in body
    assert upstream.total("GET") == 1


async def test_verification_is_on_by_default(tls_upstream: tuple[FakeSlurmrestd, str, str]) -> None:
    upstream, url, _ = tls_upstream
    transport = create_transport(url)  # the system's CAs: they never signed the throwaway CA
    try:
        with pytest.raises(UpstreamConnectError):
            await transport.send(request())
    finally:
        await transport.aclose()
    assert upstream.total("GET") == 0


async def test_another_ca_is_refused(
    tls_upstream: tuple[FakeSlurmrestd, str, str], tmp_path: Path
) -> None:
    upstream, url, _ = tls_upstream
    other = write_ca(trustme.CA(), tmp_path / "other-ca.pem")
    transport = create_transport(url, ca_file=other)
    try:
        with pytest.raises(UpstreamConnectError):
            await transport.send(request())
    finally:
        await transport.aclose()
    assert upstream.total("GET") == 0


async def test_the_proxy_caches_from_an_https_upstream(
    tls_upstream: tuple[FakeSlurmrestd, str, str],
) -> None:
    upstream, url, ca_file = tls_upstream
    app = CacheProxyApp(Settings(upstream=url, upstream_ca_file=ca_file))
    await app.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
        ) as c:
            first = await c.get(JOBS, headers=ALICE)
            second = await c.get(JOBS, headers=ALICE)
    finally:
        await app.shutdown()
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert "hit" in second.headers["cache-status"]
    assert upstream.total("GET") == 1


async def test_an_unverified_upstream_is_a_502_not_a_crash(
    tls_upstream: tuple[FakeSlurmrestd, str, str],
) -> None:
    upstream, url, _ = tls_upstream
    app = CacheProxyApp(Settings(upstream=url))
    await app.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
        ) as c:
            r = await c.get(JOBS, headers=ALICE)
    finally:
        await app.shutdown()
    assert r.status_code == 502
    assert r.json()["errors"]
    assert upstream.total("GET") == 0
