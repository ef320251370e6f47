"""Property-based tests (hypothesis) of path, query and header handling, and
of user isolation, against the whole hardened ASGI stack in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.store.memory import MemoryStore
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd, Job
from tests.hardening.conftest import FIGURES, ours

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


class _ServerLike:
    """What uvicorn does around the fake: an exception becomes its 500."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})


class Harness:
    """The hardened app with an in-process fake slurmrestd, on its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeSlurmrestd()
        self.fake.jobs = {1: Job(1, "alice"), 2: Job(2, "bob"), 3: Job(3, "root")}
        self.app = CacheProxyApp(
            Settings(upstream="http://u.test:1", auth_fail_limit=0, access_log=True),
            transport=ASGITransport(_ServerLike(self.fake)),
            store=MemoryStore(),
        )
        self.loop.run_until_complete(self.app.startup())
        self.asgi = hardening.wrap(self.app)

    def call(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 6821),
        }
        starts: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if sent_body:
                await asyncio.sleep(3600)
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                starts.append(message)
            else:
                assert starts, "body before head"
                chunks.append(message.get("body", b""))

        self.loop.run_until_complete(asyncio.wait_for(self.asgi(scope, receive, send), 10))
        assert len(starts) == 1, starts
        return starts[0]["status"], dict(starts[0]["headers"]), b"".join(chunks)

    def close(self) -> None:
        self.loop.run_until_complete(self.app.shutdown())
        self.loop.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    assert h.app.stats.internal_errors == 0
    h.close()


# -- strategies ---------------------------------------------------------------
SEGMENTS = st.sampled_from(
    [
        b"slurm",
        b"slurmdb",
        b"v0.0.43",
        b"v0.0.38",
        b"v9.9.9",
        b"jobs",
        b"job",
        b"nodes",
        b"1",
        b"1_2",
        b"1+0",
        b"..",
        b".",
        b"",
        b"%2F",
        b"%2e%2e",
        b"%00",
        b"%ff",
        b"%",
        b"%zz",
        b"%C3%A9",
        b"\xc3\xa9",
        b"\xff",
        b"openapi",
        b"_cacheproxy",
        b"health",
        b"stats",
        b"ping",
        b"partitions",
        b"diag",
        b"reconfigure",
        b"a" * 300,
    ]
)
PATHS = st.lists(SEGMENTS | st.binary(max_size=12), max_size=7).map(lambda s: b"/" + b"/".join(s))
QUERIES = st.lists(
    st.tuples(
        st.sampled_from([b"update_time", b"flags", b"token", b"x", b"", b"%", b"a+b"])
        | st.binary(max_size=6),
        st.binary(max_size=12),
    ),
    max_size=4,
).map(lambda kv: b"&".join(k + b"=" + v for k, v in kv))
HEADER_VALUE = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c not in (0, 10, 13))  # the HTTP parser rejects these
)
HEADER_NAME = st.sampled_from(
    [
        b"x-slurm-user-name",
        b"x-slurm-user-token",
        b"authorization",
        b"accept",
        b"accept-encoding",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"x-request-id",
        b"x-forwarded-for",
        b"host",
        b"cookie",
        b"expect",
        b"te",
        b"upgrade",
    ]
) | st.from_regex(rb"\A[a-z0-9!#$%&'*+.^_`|~-]{1,20}\Z")
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=8)
METHODS = st.sampled_from(
    [
        "GET",
        "GET",
        "GET",
        "POST",
        "DELETE",
        "HEAD",
        "OPTIONS",
        "PUT",
        "PATCH",
        "TRACE",
        "CONNECT",
        "PROPFIND",
    ]
)


@SETTINGS
@given(method=METHODS, path=PATHS, query=QUERIES, headers=HEADERS, body=st.binary(max_size=64))
def test_any_request_gets_an_answer_never_our_500(
    harness: Harness,
    method: str,
    path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    auth = [(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"tok-alice")]
    status, hdrs, content = harness.call(method, path, query, auth + headers, body)
    text = {k.decode(): v.decode("latin-1") for k, v in hdrs.items()}
    assert not ours(status, text, content), (status, content[:200])
    assert 100 <= status < 600
    rid = hdrs.get(b"x-request-id", b"")
    assert 0 < len(rid) <= 128
    FIGURES["fuzzed requests (path, query, headers, method, body)"] += 1


USERS = ("alice", "bob", "root")
PATHS_FOR_USERS = (
    "/slurm/v0.0.43/jobs",
    "/slurm/v0.0.43/job/1",
    "/slurm/v0.0.43/job/2",
    "/slurm/v0.0.43/nodes",
    "/slurm/v0.0.43/partitions",
)
STEP = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(["own", "own", "root", "other", "wrong", "none", "bearer-own"]),
    st.sampled_from(PATHS_FOR_USERS),
    st.booleans(),  # a write first?
)


@SETTINGS
@given(steps=st.lists(STEP, min_size=1, max_size=12))
def test_no_answer_ever_crosses_users(
    harness: Harness, steps: list[tuple[str, str, str, bool]]
) -> None:
    """Whatever sequence of users, credentials, reads and writes: a 200 is
    always for the named user, and a refused credential never gets data."""
    for user, kind, path, write in steps:
        token = {
            "own": f"tok-{user}",
            "root": "tok-root",
            "other": f"tok-{'bob' if user != 'bob' else 'alice'}",
            "wrong": "tok-guess",
            "none": "",
            "bearer-own": "",
        }[kind]
        headers = [(b"x-slurm-user-name", user.encode())]
        if token:
            headers.append((b"x-slurm-user-token", token.encode()))
        if kind == "bearer-own":
            headers.append((b"authorization", f"Bearer tok-{user}".encode()))
        if write:
            harness.call("POST", b"/slurm/v0.0.43/job/submit", b"", headers, b"{}")
        status, _, content = harness.call("GET", path.encode(), b"", headers)
        accepted = kind in ("own", "root") or (kind == "other" and user == "root")
        if not accepted:
            assert status != 200, (user, kind, path, status)
            continue
        if status == 200:
            doc = orjson.loads(content)
            assert doc["meta"]["client"]["user"] == user
            if path.endswith("/jobs") and user != "root":
                assert {j["user_name"] for j in doc["jobs"]} <= {user}
        FIGURES["isolation steps checked"] += 1
