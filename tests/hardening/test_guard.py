"""Brute-force defence and per-user rate limit (guard.py)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from cacheproxy.guard import AuthGuard, claimed_user, client_key
from cacheproxy.stats import Stats
from tests.hardening.conftest import FIGURES, JOBS, Stack, auth, check, secret

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


def make(backend: Backend, mono: Mono, **kw: Any) -> AuthGuard:
    params: dict[str, Any] = {"fail_limit": 5, "window": 60, "cooldown": 120}
    params.update(kw)
    return AuthGuard(backend, monotonic=mono, stats=Stats(), **params)


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


async def test_brute_force_through_the_real_stack(stack: Stack) -> None:
    """Guesses get slurmrestd's own answer until the limit, then 429s that
    never reach slurmrestd.  Someone guessing in alice's name from many
    addresses does not lock the real alice out (her credential was
    accepted); a client failing under many names is blocked as an address.
    uvicorn trusts X-Forwarded-For from 127.0.0.1, which stands in for
    distinct client addresses here."""
    limit = stack.proxy.app.settings.auth_fail_limit

    def via(addr: str, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "X-Forwarded-For": addr}

    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        ok = check(await c.get(JOBS, headers=via("10.2.2.2", auth("alice"))))
        assert ok.status_code == 200
        for i in range(limit):
            guess = auth("alice", secret(f"guess-{i:04d}-x"))
            r = check(await c.get(JOBS, headers=via(f"10.1.{i // 200}.{i % 200}", guess)))
            assert r.status_code == 500  # slurmrestd 22.05's answer to a wrong token
        before = stack.fake.total("GET")
        blocked = check(
            await c.get(JOBS, headers=via("10.3.3.3", auth("alice", secret("guess-last-x"))))
        )
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        assert stack.fake.total("GET") == before  # refused without reaching slurmrestd
        real = check(await c.get(JOBS, headers=via("10.2.2.2", auth("alice"))))
        assert real.status_code == 200  # the real alice: accepted credential
        for i in range(limit):
            r = check(await c.get(JOBS, headers=via("10.4.4.4", auth(f"u{i}", "nope"))))
            assert r.status_code == 500
        r = check(await c.get(JOBS, headers=via("10.4.4.4", auth("bob"))))
        assert r.status_code == 429  # the address is blocked, whoever it claims to be
    FIGURES["brute-force attempts refused"] += 2
    assert stack.proxy.app.stats.auth_blocked == 2


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
