"""Optional local JWT verification (jwtcheck.py): HS256 key file and RS256
JWKS; refusals never reach slurmrestd and look like slurmrestd's own."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cacheproxy.cli import main
from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.http.jwtcheck import JwtConfigError, TokenVerifier, load_hs256_key, load_jwks
from cacheproxy.settings import Settings
from cacheproxy.store.memory import MemoryStore
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.hardening.conftest import JOBS, check, secret


def hs256(key: bytes, user: str, *, exp: float | None = None, **extra: Any) -> str:
    claims: dict[str, Any] = {"sun": user, "iat": int(time.time())}
    claims["exp"] = int(exp if exp is not None else time.time() + 3600)
    claims.update(extra)
    return secret(jwt.encode(claims, key, algorithm="HS256"))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": [jwk]}


def rs256(key: rsa.RSAPrivateKey, user: str, kid: str | None, *, exp: float | None = None) -> str:
    claims = {"sun": user, "exp": int(exp if exp is not None else time.time() + 3600)}
    headers = {"kid": kid} if kid is not None else None
    return secret(jwt.encode(claims, key, algorithm="RS256", headers=headers))


class Env:
    def __init__(self, fake: FakeSlurmrestd, app: CacheProxyApp, client: httpx.AsyncClient):
        self.fake, self.app, self.client = fake, app, client

    async def get(self, user: str, token: str, bearer: bool = False) -> httpx.Response:
        headers = (
            {"Authorization": f"Bearer {token}", "X-SLURM-USER-NAME": user}
            if bearer
            else {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
        )
        return check(await self.client.get(JOBS, headers=headers))


async def env_for(settings: Settings) -> AsyncIterator[Env]:
    fake = FakeSlurmrestd()
    app = CacheProxyApp(settings, transport=ASGITransport(fake), store=MemoryStore())
    await app.startup()
    asgi = hardening.wrap(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://proxy.test"
    ) as c:
        yield Env(fake, app, c)
    await app.shutdown()


@pytest.fixture
def hs_key(tmp_path: Path) -> tuple[bytes, Path]:
    key = secrets.token_bytes(32)
    path = tmp_path / "jwt_hs256.key"
    path.write_bytes(key)
    return key, path


@pytest.fixture
async def hs_env(hs_key: tuple[bytes, Path]) -> AsyncIterator[Env]:
    async for env in env_for(Settings(upstream="http://u.test:1", jwt_key=str(hs_key[1]))):
        yield env


async def test_hs256_good_token_goes_upstream(hs_env: Env, hs_key: tuple[bytes, Path]) -> None:
    token = hs256(hs_key[0], "alice")
    hs_env.fake.tokens["alice"] = token
    r = await hs_env.get("alice", token)
    assert r.status_code == 200
    assert hs_env.fake.total("GET", "/jobs") == 1  # still judged by slurmrestd


@pytest.mark.parametrize(
    "forge",
    [
        "wrong-key",
        "tampered",
        "expired",
        "no-exp",
        "alg-none",
        "garbage",
        "empty-sig",
    ],
)
async def test_hs256_refusals_never_reach_slurmrestd(
    hs_env: Env, hs_key: tuple[bytes, Path], forge: str
) -> None:
    key = hs_key[0]
    token = {
        "wrong-key": lambda: hs256(secrets.token_bytes(32), "alice"),
        "tampered": lambda: _tamper(hs256(key, "alice")),
        "expired": lambda: hs256(key, "alice", exp=time.time() - 60),
        "no-exp": lambda: secret(jwt.encode({"sun": "alice"}, key, algorithm="HS256")),
        "alg-none": lambda: secret(jwt.encode({"sun": "alice", "exp": 2**31}, None, "none")),
        "garbage": lambda: secret("not-a-jwt-at-all"),
        "empty-sig": lambda: secret(hs256(key, "alice").rsplit(".", 1)[0] + "."),
    }[forge]()
    for bearer in (False, True):
        r = await hs_env.get("alice", token, bearer=bearer)
        assert r.status_code == 401
        assert r.headers["content-type"] == "text/plain"
        assert r.content == b"Authentication failure"
    assert hs_env.fake.total() == 0
    assert hs_env.app.stats.jwt_rejected == 2


async def test_expiry_leeway_and_memo(hs_env: Env, hs_key: tuple[bytes, Path]) -> None:
    token = hs256(hs_key[0], "alice", exp=time.time() - 2)  # within the 5 s leeway
    hs_env.fake.tokens["alice"] = token
    assert (await hs_env.get("alice", token)).status_code == 200
    verifier = _verifier(hs_env)
    assert all(token.encode() not in k for k in verifier._memo)  # keyed by HMAC, never the token
    assert len(verifier._memo) == 1


def _verifier(env: Env) -> TokenVerifier:
    found = None
    app: Any = None
    for app in _layers(env.client):
        if hasattr(app, "verifier"):
            found = app.verifier
    assert isinstance(found, TokenVerifier), app
    return found


def _layers(client: httpx.AsyncClient) -> list[Any]:
    pipeline = client._transport.app  # type: ignore[attr-defined]
    return [pipeline, *pipeline.steps]


def _hs256_by_hand(key: bytes, user: str) -> str:
    """What PyJWT refuses to make: an HS256 token keyed with a PEM public key."""
    import hashlib
    import hmac

    enc = jwt.utils.base64url_encode
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = enc(json.dumps({"sun": user, "exp": int(time.time()) + 3600}).encode())
    sig = enc(hmac.new(key, head + b"." + body, hashlib.sha256).digest())
    return secret((head + b"." + body + b"." + sig).decode())


def _tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["sun"] = "root"
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return secret(f"{head}.{forged}.{sig}")


async def test_rs256_jwks(tmp_path: Path) -> None:
    key, other = rsa_key(), rsa_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_of(key, "k1")))
    settings = Settings(upstream="http://u.test:1", jwks_file=str(path))
    async for env in env_for(settings):
        good = rs256(key, "alice", "k1")
        env.fake.tokens["alice"] = good
        assert (await env.get("alice", good)).status_code == 200
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        refused = [
            rs256(other, "alice", "k1"),  # signed by another key
            rs256(key, "alice", "k2"),  # unknown kid
            rs256(key, "alice", "k1", exp=time.time() - 60),  # expired
            _hs256_by_hand(pem, "alice"),  # alg confusion: HS256 keyed with the public key
        ]
        for token in refused:
            assert (await env.get("alice", token)).status_code == 401
        assert env.fake.total() == 1


def test_bad_key_files_fail_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(JwtConfigError):
        load_hs256_key(str(tmp_path / "missing.key"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(JwtConfigError):
        load_jwks(str(tmp_path / "bad.json"))
    code = main(["serve", "--upstream", "http://127.0.0.1:1", "--jwt-key", str(tmp_path / "x")])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err
