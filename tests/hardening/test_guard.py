"""Brute-force defence and per-user rate limit (guard.py)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.http.guard import AuthGuard, claimed_user, client_key
from cacheproxy.http.jwtcheck import TokenVerifier
from cacheproxy.http.pipeline import AsgiHandler, Pipeline
from cacheproxy.settings import Settings, SettingsError
from cacheproxy.settings import load as load_settings
from cacheproxy.stats import Stats
from cacheproxy.store.memory import MemoryStore
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.hardening.conftest import (
    FIGURES,
    JOBS,
    Stack,
    auth,
    check,
    secret,
    stack_settings,
)
from tests.hardening.servers import Proxy, hardened_proxy

AUTH_500 = orjson.dumps(
    {"errors": [{"error_number": -1, "error": "Unspecified error"}], "warnings": []}
)
OTHER_500 = orjson.dumps({"errors": [{"error_number": 2017, "error": "Invalid job id"}]})


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """An ASGI app answering ``status`` (and ``body``); counts its calls."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": self.body})


class Guarded(Pipeline):
    """The guard as the one step of a pipeline around ``backend``."""

    def __init__(self, guard: AuthGuard, backend: Any) -> None:
        super().__init__([guard], AsgiHandler(backend), guard.stats)
        self.guard = guard

    @property
    def _blocked(self) -> dict[str, float]:
        return self.guard._blocked


async def call(
    app: Any,
    *,
    client: str = "10.0.0.1",
    user: str | None = "alice",
    token: str = "tok",
    path: str = JOBS,
) -> tuple[int, dict[bytes, bytes], bytes]:
    headers = [(b"x-slurm-user-token", token.encode())]
    if user is not None:
        headers.append((b"x-slurm-user-name", user.encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": headers,
        "client": (client, 5000),
        "query_string": b"",
    }
    out: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], dict(message["headers"])
        else:
            out["body"] = out.get("body", b"") + message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["headers"], out["body"]


def make(backend: Backend, mono: Mono, **kw: Any) -> Guarded:
    params: dict[str, Any] = {"fail_limit": 5, "window": 60, "cooldown": 120}
    params.update(kw)
    return Guarded(AuthGuard(monotonic=mono, stats=Stats(), **params), backend)


async def test_address_blocked_after_failures_then_released() -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono)
    backend.status = 401
    for i in range(5):
        status, _, _ = await call(guard, user=f"user{i}")  # different names, one address
        assert status == 401
    status, headers, body = await call(guard, user="someone-else")
    assert status == 429
    assert headers[b"retry-after"] == b"120"
    doc = orjson.loads(body)
    assert doc["errors"][0]["description"] == "Authentication failure"  # terse
    assert backend.calls == 5  # the 6th never reached upstream
    assert (await call(guard, client="10.0.0.2", user="x"))[0] == 401  # other clients pass
    mono.now += 121
    backend.status = 200
    assert (await call(guard))[0] == 200
    assert guard.stats.auth_blocked == 1


async def test_user_blocked_across_addresses_unless_accepted() -> None:
    backend, mono = Backend(), Mono()
    accepted: set[str] = set()

    async def is_accepted(headers: list[tuple[bytes, bytes]]) -> bool:
        return dict(headers).get(b"x-slurm-user-token", b"").decode() in accepted

    guard = make(backend, mono, is_accepted=is_accepted)
    backend.status, backend.body = 500, AUTH_500
    for i in range(5):
        assert (await call(guard, client=f"10.0.1.{i}", token=f"guess{i}"))[0] == 500
    assert (await call(guard, client="10.9.9.9", token="guess9"))[0] == 500  # one trial
    assert (await call(guard, client="10.9.9.9", token="guess9"))[0] == 429
    accepted.add("the-real-one")  # the real alice, whose token slurmrestd accepted
    backend.status, backend.body = 200, b"{}"
    assert (await call(guard, client="10.9.9.9", token="the-real-one"))[0] == 200
    assert (await call(guard, client="10.9.9.8", user="bob"))[0] == 200


@pytest.mark.parametrize(
    ("status", "body", "counts"),
    [
        (401, b"Authentication failure", True),
        (511, b"{}", True),
        (500, AUTH_500, True),
        (500, OTHER_500, False),
        (403, b"{}", False),
        (404, b"", False),
        (200, b"{}", False),
    ],
)
async def test_what_counts_as_a_failure(status: int, body: bytes, counts: bool) -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono, fail_limit=3)
    backend.status, backend.body = status, body
    for _ in range(3):
        await call(guard)
    assert ((await call(guard))[0] == 429) is counts


async def test_window_slides() -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono, fail_limit=3, window=10)
    backend.status = 401
    for _ in range(2):
        await call(guard)
    mono.now += 11  # those two fell out of the window
    await call(guard)
    await call(guard)
    assert (await call(guard))[0] == 401
    assert (await call(guard))[0] == 429


def test_ipv6_counted_per_64_and_user_from_jwt() -> None:
    a = client_key({"client": ("2001:db8:1:2:aaaa::1", 1)})
    b = client_key({"client": ("2001:db8:1:2:bbbb::9", 1)})
    assert a == b == "a:2001:db8:1:2::/64"
    assert client_key({"client": ("192.0.2.1", 1)}) == "a:192.0.2.1"
    import base64

    payload = base64.urlsafe_b64encode(b'{"sun":"carol","exp":1}').rstrip(b"=")
    token = b"eyJhbGciOiJIUzI1NiJ9." + payload + b".sig"
    assert claimed_user([(b"authorization", b"Bearer " + token)]) == "u:carol"
    assert claimed_user([(b"x-slurm-user-name", b"dave"), (b"x-slurm-user-token", token)]) == (
        "u:dave"
    )


async def test_rate_limit_per_user() -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono, user_rate=2.0, user_burst=3)
    assert [(await call(guard))[0] for _ in range(3)] == [200, 200, 200]
    status, headers, _ = await call(guard)
    assert status == 429
    assert headers[b"retry-after"] == b"1"
    assert (await call(guard, user="bob"))[0] == 200  # per user
    assert (await call(guard, path="/_cacheproxy/health"))[0] == 200  # own endpoints: never
    mono.now += 0.5
    assert (await call(guard))[0] == 200
    assert guard.stats.rate_limited == 1


async def test_guard_is_off_with_zero() -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono, fail_limit=0)
    backend.status = 401
    for _ in range(50):
        assert (await call(guard))[0] == 401


async def test_brute_force_through_the_real_stack(
    fake_upstream: tuple[FakeSlurmrestd, int],
) -> None:
    """Guesses get slurmrestd's own answer until the limit, then 429s that
    never reach slurmrestd.  Someone guessing in alice's name from many
    addresses does not lock the real alice out (her credential was
    accepted); a client failing under many names is blocked as an address.
    The proxy believes X-Forwarded-For from 127.0.0.1 here (configured, as
    behind a local balancer), which stands in for distinct client addresses."""
    fake, port = fake_upstream
    settings = stack_settings(f"http://127.0.0.1:{port}", forwarded_allow_ips="127.0.0.1")
    async with hardened_proxy(settings) as proxy:
        await _brute_force(proxy, fake)


async def _brute_force(proxy: Proxy, fake: FakeSlurmrestd) -> None:
    limit = proxy.app.settings.auth_fail_limit

    def via(addr: str, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "X-Forwarded-For": addr}

    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as c:
        ok = check(await c.get(JOBS, headers=via("10.2.2.2", auth("alice"))))
        assert ok.status_code == 200
        for i in range(limit):
            guess = auth("alice", secret(f"guess-{i:04d}-x"))
            r = check(await c.get(JOBS, headers=via(f"10.1.{i // 200}.{i % 200}", guess)))
            assert r.status_code == 500  # slurmrestd 22.05's answer to a wrong token
        before = fake.total("GET")
        blocked = check(
            await c.get(JOBS, headers=via("10.3.3.3", auth("alice", secret("guess-last-x"))))
        )
        # One upstream check for a credential never seen (it might be alice's
        # new token); its failure is counted, and it is not tried again.
        assert blocked.status_code == 500
        assert fake.total("GET") == before + 1
        again = check(
            await c.get(JOBS, headers=via("10.3.3.3", auth("alice", secret("guess-last-x"))))
        )
        assert again.status_code == 429
        assert int(again.headers["retry-after"]) > 0
        assert fake.total("GET") == before + 1  # refused without reaching slurmrestd
        real = check(await c.get(JOBS, headers=via("10.2.2.2", auth("alice"))))
        assert real.status_code == 200  # the real alice: accepted credential
        for i in range(limit):
            r = check(await c.get(JOBS, headers=via("10.4.4.4", auth(f"u{i}", "nope"))))
            assert r.status_code == 500
        r = check(await c.get(JOBS, headers=via("10.4.4.4", auth("bob"))))
        assert r.status_code == 429  # the address is blocked, whoever it claims to be
    FIGURES["brute-force attempts refused"] += 2
    assert proxy.app.stats.auth_blocked == 2
    assert proxy.app.stats.auth_trials == 1


async def test_forwarded_for_from_loopback_neither_dodges_a_block_nor_locks_out_a_user(
    stack: Stack,
) -> None:
    """Issue 14, defect 3.  By default no forwarding header is believed: a
    guesser on loopback inventing X-Forwarded-For addresses is one address,
    blocked after the limit, and bob's never-used valid token, from another
    address, still gets slurmrestd's answer (before: 429 for two minutes)."""
    limit = stack.proxy.app.settings.auth_fail_limit
    attacker = httpx.AsyncClient(base_url=stack.url, timeout=10)
    bob = httpx.AsyncClient(
        base_url=stack.url,
        timeout=10,
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
    )
    async with attacker, bob:
        for i in range(limit):
            forged = {**auth("bob", secret(f"bob-guess-{i:03d}")), "X-Forwarded-For": f"10.9.{i}.1"}
            r = check(await attacker.get(JOBS, headers=forged))
            assert r.status_code == 500
        other = {**auth("carol", secret("carol-guess")), "X-Forwarded-For": "10.8.8.8"}
        r = check(await attacker.get(JOBS, headers=other))
        assert r.status_code == 429  # the attacker's own address, whatever it claims
        r = check(await bob.get(JOBS, headers=auth("bob")))
        assert r.status_code == 200, r.text  # bob's valid token, never used before
        assert r.json()["meta"]["client"]["user"] == "bob"
    assert stack.proxy.app.stats.auth_trials == 1


async def test_a_blocked_names_new_token_gets_one_upstream_check() -> None:
    """Issue 14, defect 3, without local JWT verification: a never-accepted
    credential claiming a blocked name, from an unblocked address, is tried
    upstream once, so the real user's new token is judged by slurmrestd."""
    backend, mono = Backend(), Mono()
    guard = make(backend, mono)
    backend.status, backend.body = 500, AUTH_500
    for i in range(5):
        assert (await call(guard, client=f"10.0.1.{i}", token=f"guess{i}"))[0] == 500
    backend.status, backend.body = 200, b"{}"
    calls = backend.calls
    assert (await call(guard, client="10.9.9.9", token="alices-new-token"))[0] == 200
    assert backend.calls == calls + 1
    assert guard.stats.auth_trials == 1


async def test_trials_for_a_blocked_name_are_bounded() -> None:
    """A guesser cannot turn the trials into a way past the block: one per
    distinct credential, a tenth of the limit per address and the limit per
    name, per cool-down; a failed trial counts as a failure."""
    backend, mono = Backend(), Mono()
    guard = make(backend, mono, fail_limit=20, cooldown=120)
    backend.status, backend.body = 500, AUTH_500
    for i in range(20):
        await call(guard, client=f"10.0.0.{i}", token=f"g{i}")
    calls = backend.calls
    # one address: two trials (20 // 10), then 429 whatever the token
    assert [(await call(guard, client="10.1.0.1", token=f"t{i}"))[0] for i in range(3)] == [
        500,
        500,
        429,
    ]
    # the same credential twice: tried once
    assert (await call(guard, client="10.1.0.2", token="same"))[0] == 500
    assert (await call(guard, client="10.1.0.3", token="same"))[0] == 429
    # many addresses: at most the limit per name
    statuses = [(await call(guard, client=f"10.2.0.{i}", token=f"d{i}"))[0] for i in range(40)]
    assert statuses.count(500) == 20 - 3
    assert backend.calls - calls == 20
    assert guard.stats.auth_trials == 20
    mono.now += 121  # a new cool-down: the real alice's token is tried again
    backend.status, backend.body = 200, b"{}"
    assert (await call(guard, client="10.3.0.1", token="real"))[0] == 200


async def test_a_blocked_address_gets_no_trials() -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono)
    backend.status = 401
    for i in range(5):
        await call(guard, user=f"user{i}", token=f"g{i}")
    backend.status = 200
    assert (await call(guard, user="user0", token="new"))[0] == 429
    assert backend.calls == 5


async def test_a_verified_token_passes_a_blocked_name_and_address() -> None:
    """Issue 14, defect 3, with local JWT verification: a token whose
    signature verifies passes a blocked name and a blocked address (bob's
    token behind the guesser's portal address), without a trial."""
    backend, mono = Backend(), Mono()
    key = b"k" * 32
    verifier = TokenVerifier(hmac_key=b"h" * 32, hs256_key=key)
    guard = make(backend, mono, proves_itself=verifier.proves)
    backend.status = 401
    for i in range(5):
        assert (await call(guard, user="bob", token=f"forged{i}"))[0] == 401
    good = jwt.encode({"sun": "bob", "exp": int(time.time()) + 600}, key, algorithm="HS256")
    expired = jwt.encode({"sun": "bob", "exp": int(time.time()) - 600}, key, algorithm="HS256")
    backend.status = 200
    assert (await call(guard, user="bob", token=expired))[0] == 429
    assert (await call(guard, user="bob", token=good))[0] == 200  # same address, same name
    assert guard.stats.auth_proven == 1
    assert guard.stats.auth_trials == 0


async def test_a_verified_token_passes_a_blocked_name_through_the_stack(
    tmp_path: Path,
) -> None:
    """The same through ``hardening.wrap`` with ``--jwt-key``: 30 forged
    tokens in bob's name (refused locally, 401) block the name; bob's own
    valid token, never used before, is answered by slurmrestd."""
    key = secrets.token_bytes(32)
    (tmp_path / "jwt.key").write_bytes(key)
    fake = FakeSlurmrestd()
    settings = Settings(upstream="http://u.test:1", jwt_key=str(tmp_path / "jwt.key"))
    app = CacheProxyApp(settings, transport=ASGITransport(fake), store=MemoryStore())
    await app.startup()
    asgi = hardening.wrap(app)
    token = secret(jwt.encode({"sun": "bob", "exp": int(time.time()) + 600}, key, "HS256"))
    fake.tokens["bob"] = token

    def client(addr: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=asgi, client=(addr, 4321))
        return httpx.AsyncClient(transport=transport, base_url="http://proxy.test")

    try:
        for i in range(settings.auth_fail_limit):
            async with client(f"10.5.0.{i}") as c:
                r = await c.get(JOBS, headers=auth("bob", secret(f"forged.{i}.x")))
                assert r.status_code == 401
        async with client("10.5.1.1") as c:
            assert (await c.get(JOBS, headers=auth("bob", secret("forged.y.z")))).status_code == 429
            r = await c.get(JOBS, headers=auth("bob", token))
            assert r.status_code == 200
        assert fake.total("GET", "/jobs") == 1
        assert app.stats.auth_proven == 1
    finally:
        await app.shutdown()


async def test_own_endpoints_are_never_blocked_but_the_admin_api_is() -> None:
    backend, mono = Backend(), Mono()
    guard = make(backend, mono)
    backend.status = 401
    for i in range(5):
        await call(guard, user=f"user{i}")
    backend.status = 200
    for path in ("/_cacheproxy/health", "/_cacheproxy/ready", "/_cacheproxy/metrics"):
        assert (await call(guard, path=path))[0] == 200
    assert (await call(guard, path="/_cacheproxy/admin/stats"))[0] == 429


def test_forwarding_headers_are_believed_only_from_configured_balancers() -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 unless told; the
    proxy's own protocol believes it from nobody by default, else exactly
    from the configured list (and uvicorn's middleware is off)."""
    options = hardening.uvicorn_options(Settings(upstream="http://u:1"))
    assert options["proxy_headers"] is False
    assert options["http"].keywords["options"].forwarded_allow_ips == ()
    s = Settings(upstream="http://u:1", forwarded_allow_ips="10.0.0.10, 10.0.1.0/24")
    options = hardening.uvicorn_options(s)
    assert options["proxy_headers"] is False
    trusted = options["http"].keywords["options"].forwarded_allow_ips
    assert trusted == ("10.0.0.10", "10.0.1.0/24")
    loaded = load_settings(env={"CACHEPROXY_FORWARDED_ALLOW_IPS": "::1,127.0.0.1"})
    assert loaded.forwarded_allow_ips == "::1,127.0.0.1"
    for bad in ("10.0.0.0.1", "10.0.1.5/24", "lb.example", "*,10.0.0.1"):
        with pytest.raises(SettingsError, match="forwarded_allow_ips"):
            load_settings(env={"CACHEPROXY_FORWARDED_ALLOW_IPS": bad})


async def test_expired_blocks_are_forgotten() -> None:
    """Once every cool-down is over, the guard is back to its fast path."""
    backend, mono = Backend(), Mono()
    guard = make(backend, mono, fail_limit=2, cooldown=10)
    backend.status = 401
    for _ in range(2):
        await call(guard)
    assert guard._blocked
    mono.now += 11
    backend.status = 200
    assert (await call(guard, client="10.7.7.7", user="zed"))[0] == 200
    assert not guard._blocked


@pytest.mark.parametrize(("trusted", "expected"), [("", "127.0.0.1"), ("127.0.0.1", "10.7.7.7")])
async def test_one_setting_decides_the_client_on_both_paths(
    fake_upstream: tuple[FakeSlurmrestd, int], logs: Any, trusted: str, expected: str
) -> None:
    """The fast lane (a GET no rule caches, forwarded from the lane) and
    the ASGI path (a POST) see the same client: the socket's by default,
    the forwarded one only from a configured balancer."""
    _, port = fake_upstream
    settings = stack_settings(f"http://127.0.0.1:{port}", forwarded_allow_ips=trusted)
    headers = {**auth("alice"), "X-Forwarded-For": "10.7.7.7"}
    async with (
        hardened_proxy(settings) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as c,
    ):
        assert check(await c.get("/slurm/v0.0.43/ping", headers=headers)).status_code == 200
        assert check(await c.get("/slurm/v0.0.43/ping", headers=headers)).status_code == 200
        r = check(await c.post("/slurm/v0.0.43/job/submit", headers=headers, json={"job": {}}))
        assert r.status_code == 200
    lines = [
        orjson.loads(line.split(": ", 1)[1]) for line in logs.lines if "cacheproxy.access" in line
    ]
    assert [(x["method"], x["client"]) for x in lines] == [
        ("GET", expected),
        ("GET", expected),
        ("POST", expected),
    ]
