"""TLS termination with trustme certificates: TLS 1.3 preferred, 1.2
accepted with forward-secret AEAD suites only, anything older refused."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
import uvicorn

from cacheproxy.http import hardening, tls
from cacheproxy.settings import Settings
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.hardening.conftest import FIGURES, JOBS, auth, check, stack_settings
from tests.hardening.servers import Proxy, hardened_proxy


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    with open(chain, "wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    return str(chain), str(key)


@pytest.fixture
async def proxy(
    fake_upstream: tuple[FakeSlurmrestd, int], cert_files: tuple[str, str]
) -> AsyncIterator[Proxy]:
    chain, key = cert_files
    settings = stack_settings(f"http://127.0.0.1:{fake_upstream[1]}", tls_cert=chain, tls_key=key)
    async with hardened_proxy(settings) as p:
        yield p


def client_context(ca: trustme.CA, *, low: ssl.TLSVersion, high: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1, on purpose
        ctx.minimum_version, ctx.maximum_version = low, high
    if high < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client at least offer it
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
    )
    obj = writer.get_extra_info("ssl_object")
    version, cipher = obj.version(), obj.cipher()[0]
    writer.close()
    return version, cipher


async def test_https_serves_and_prefers_tls13(proxy: Proxy, ca: trustme.CA) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    async with httpx.AsyncClient(base_url=proxy.url, verify=ctx) as c:
        r = check(await c.get(JOBS, headers=auth("alice")))
        assert r.status_code == 200
        again = await c.get(JOBS, headers=auth("alice"))
        assert again.headers["cache-status"].startswith("cacheproxy; hit")
    version, _ = await handshake(proxy.port, ctx)
    assert version == "TLSv1.3"


async def test_tls12_only_with_aead_suites(proxy: Proxy, ca: trustme.CA) -> None:
    ctx = client_context(ca, low=ssl.TLSVersion.TLSv1_2, high=ssl.TLSVersion.TLSv1_2)
    version, cipher = await handshake(proxy.port, ctx)
    assert version == "TLSv1.2"
    assert cipher in tls.TLS12_CIPHERS.split(":")
    weak = client_context(ca, low=ssl.TLSVersion.TLSv1_2, high=ssl.TLSVersion.TLSv1_2)
    weak.set_ciphers("AES128-SHA:AES256-SHA:AES128-SHA256")  # no forward secrecy, CBC
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(proxy.port, weak)


@pytest.mark.parametrize("high", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_old_protocols_refused(proxy: Proxy, ca: trustme.CA, high: ssl.TLSVersion) -> None:
    ctx = client_context(ca, low=ssl.TLSVersion.TLSv1, high=high)
    with pytest.raises((ssl.SSLError, ConnectionError)) as info:
        await handshake(proxy.port, ctx)
    # The server refused it (an alert), not the client's own OpenSSL policy.
    assert "no protocols available" not in str(info.value).lower(), info.value
    FIGURES["TLS downgrade attempts refused"] += 1


def test_the_served_context_has_a_tls12_floor(cert_files: tuple[str, str]) -> None:
    """What uvicorn actually serves with, not just what we asked for."""
    chain, key = cert_files
    settings = Settings(upstream="http://127.0.0.1:1", tls_cert=chain, tls_key=key)
    config = uvicorn.Config(lambda *a: None, **hardening.uvicorn_options(settings))
    config.load()
    assert config.ssl is not None
    assert config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.ssl.options & ssl.OP_NO_COMPRESSION
    assert tls.server_context(chain, key).minimum_version == ssl.TLSVersion.TLSv1_2


async def test_plain_http_to_the_tls_port_fails_cleanly(proxy: Proxy) -> None:
    async with httpx.AsyncClient(base_url=proxy.url.replace("https", "http")) as c:
        with pytest.raises(httpx.HTTPError):
            await c.get(JOBS, headers=auth("alice"))
    # and the server still serves TLS afterwards
    ctx = ssl.create_default_context(cafile=None)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    version, _ = await handshake(proxy.port, ctx)
    assert version == "TLSv1.3"
