"""The proxied path end to end, in-process: hits, misses, isolation, writes."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.store.base import Lookup, StoreError
from cacheproxy.store.memory import MemoryStore
from tests.core.conftest import Clock, auth
from tests.core.fake_slurmrestd import FakeSlurmrestd

JOBS = "/slurm/v0.0.43/jobs"


async def test_miss_then_hit(client: httpx.AsyncClient, upstream: FakeSlurmrestd) -> None:
    r1 = await client.get(JOBS, headers=auth("alice"))
    assert r1.status_code == 200
    assert r1.headers["cache-status"] == "cacheproxy; fwd=miss; stored"
    r2 = await client.get(JOBS, headers=auth("alice"))
    assert r2.status_code == 200
    assert r2.headers["cache-status"].startswith("cacheproxy; hit; ttl=")
    assert r2.headers["age"] == "0"
    assert r2.content == r1.content
    assert upstream.total("GET", "/jobs") == 1


async def test_equivalent_paths_share_an_entry(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get(JOBS, headers=auth("alice"))
    for path in ("/slurm/v0.0.43/jobs/", "//slurm/v0.0.43//jobs", "/slurm/v0.0.43/%6Aobs"):
        r = await client.get("http://proxy.test" + path, headers=auth("alice"))
        assert r.headers["cache-status"].startswith("cacheproxy; hit"), path
    assert upstream.total("GET", "/jobs") == 1


async def test_ttl_expiry_with_injected_clock(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, clock: Clock
) -> None:
    await client.get(JOBS, headers=auth("alice"))
    clock.advance(4.9)
    assert (
        (await client.get(JOBS, headers=auth("alice")))
        .headers["cache-status"]
        .startswith("cacheproxy; hit")
    )
    clock.advance(0.2)
    r = await client.get(JOBS, headers=auth("alice"))
    # expired: slurmrestd is asked again (cheaply, with update_time)
    assert r.headers["cache-status"] == "cacheproxy; fwd=stale; fwd-status=304; stored"
    assert upstream.total("GET", "/jobs") == 2


async def test_entry_never_served_to_another_user(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
    a = await client.get(JOBS, headers=auth("alice"))
    b = await client.get(JOBS, headers=auth("bob"))
    assert orjson.loads(a.content)["meta"]["client"]["user"] == "alice"
    assert orjson.loads(b.content)["meta"]["client"]["user"] == "bob"
    assert orjson.loads(b.content)["jobs"] == []
    assert b.headers["cache-status"].startswith("cacheproxy; fwd=miss")


async def test_wrong_or_missing_token_never_gets_cached_data(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    ok = await client.get(JOBS, headers=auth("alice"))
    assert ok.status_code == 200
    wrong = await client.get(JOBS, headers=auth("alice", "tok-guess"))
    assert wrong.status_code == 500
    assert wrong.headers["cache-status"].startswith("cacheproxy; fwd=miss")
    missing = await client.get(JOBS, headers={"X-SLURM-USER-NAME": "alice"})
    assert missing.status_code == 401
    assert missing.content == b"Authentication failure"
    assert missing.headers["cache-status"] == "cacheproxy; fwd=request"
    bobs_token = await client.get(JOBS, headers=auth("alice", "tok-bob"))
    assert bobs_token.status_code == 500
    # and the accepted credential still hits
    again = await client.get(JOBS, headers=auth("alice"))
    assert again.headers["cache-status"].startswith("cacheproxy; hit")


async def test_new_token_for_same_user_must_be_accepted_first(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get(JOBS, headers=auth("alice"))
    # root's token acting as alice is accepted upstream (as slurmrestd does)
    r = await client.get(JOBS, headers=auth("alice", "tok-root"))
    assert r.headers["cache-status"].startswith("cacheproxy; fwd=miss")
    r = await client.get(JOBS, headers=auth("alice", "tok-root"))
    assert r.headers["cache-status"].startswith("cacheproxy; hit")


async def test_acceptance_expires_after_auth_ttl(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, clock: Clock, app: CacheProxyApp
) -> None:
    assert app.proxy is not None
    await client.get("/slurm/v0.0.43/partitions", headers=auth("alice"))
    clock.advance(59)
    r = await client.get("/slurm/v0.0.43/partitions", headers=auth("alice"))
    assert r.headers["cache-status"].startswith("cacheproxy; hit")
    clock.advance(2)  # partitions ttl is 60 s, but acceptance (60 s) lapsed
    r = await client.get("/slurm/v0.0.43/partitions", headers=auth("alice"))
    assert r.headers["cache-status"].startswith("cacheproxy; fwd=miss")


async def test_accept_header_is_part_of_the_key(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    j = await client.get(JOBS, headers=auth("alice"))
    y = await client.get(JOBS, headers={**auth("alice"), "Accept": "application/x-yaml"})
    assert j.headers["content-type"] == "application/json"
    assert y.headers["content-type"] == "application/x-yaml"
    assert upstream.total("GET", "/jobs") == 2


async def test_query_is_part_of_the_key_in_any_order(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get(JOBS + "?flags=DETAIL&b=2", headers=auth("alice"))
    r = await client.get(JOBS + "?b=2&flags=DETAIL", headers=auth("alice"))
    assert r.headers["cache-status"].startswith("cacheproxy; hit")
    r = await client.get(JOBS + "?flags=ALL", headers=auth("alice"))
    assert r.headers["cache-status"].startswith("cacheproxy; fwd=miss")


async def test_submit_then_get_shows_the_job(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get(JOBS, headers=auth("alice"))
    for _ in range(100):
        r = await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
        job_id = r.json()["job_id"]
        assert r.headers["cache-status"] == "cacheproxy; fwd=method"
        listed = await client.get(JOBS, headers=auth("alice"))
        assert job_id in [j["job_id"] for j in listed.json()["jobs"]]


async def test_write_invalidates_across_versions(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get("/slurm/v0.0.38/jobs", headers=auth("alice"))
    r = await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
    job_id = r.json()["job_id"]
    listed = await client.get("/slurm/v0.0.38/jobs", headers=auth("alice"))
    assert job_id in [j["job_id"] for j in listed.json()["jobs"]]


async def test_cancel_invalidates_the_job(client: httpx.AsyncClient) -> None:
    r = await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
    job_id = r.json()["job_id"]
    first = await client.get(f"/slurm/v0.0.43/job/{job_id}", headers=auth("alice"))
    assert first.json()["jobs"][0]["job_state"] == "PENDING"
    await client.delete(f"/slurm/v0.0.43/job/{job_id}", headers=auth("alice"))
    after = await client.get(f"/slurm/v0.0.43/job/{job_id}", headers=auth("alice"))
    assert after.json()["jobs"][0]["job_state"] == "CANCELLED"


async def test_write_body_arrives_byte_exact(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    body = bytes(range(256)) * 64 + b'{"job": {"script": "#!/bin/sh\\nsrun true"}}'
    r = await client.post(
        "/slurm/v0.0.43/job/submit",
        headers={**auth("alice"), "Content-Type": "application/json"},
        content=body,
    )
    assert r.status_code == 200
    assert upstream.bodies[-1] == body


async def test_unmatched_get_passes_through_every_time(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    for _ in range(3):
        r = await client.get("/slurm/v0.0.43/nodes-unknown-path", headers=auth("alice"))
        assert r.status_code == 404
        assert r.headers["cache-status"] == "cacheproxy; fwd=uri-miss"
    assert upstream.total("GET", "/nodes-unknown-path") == 3


async def test_never_cached_rules_pass_through(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    for _ in range(3):
        r = await client.get("/slurm/v0.0.43/ping", headers=auth("alice"))
        assert r.headers["cache-status"] == "cacheproxy; fwd=bypass"
    assert upstream.total("GET", "/ping") == 3


async def test_errors_are_not_cached(client: httpx.AsyncClient, upstream: FakeSlurmrestd) -> None:
    upstream.fail_next = 1
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.status_code == 500
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.status_code == 200
    assert r.headers["cache-status"] == "cacheproxy; fwd=miss; stored"


async def test_errors_array_not_empty_is_not_stored(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, app: CacheProxyApp
) -> None:
    # witherrors answers 200 with a non-empty errors array: use a rule for it
    from cacheproxy.core.rules import RuleSet

    assert app.proxy is not None
    app.proxy.rules = RuleSet.from_toml(
        '[[rule]]\nname="w"\npath="/slurm/{v}/witherrors"\nttl=30\ntags=["w"]\n'
    )
    for _ in range(2):
        r = await client.get("/slurm/v0.0.43/witherrors", headers=auth("alice"))
        assert r.status_code == 200
        assert r.headers["cache-status"] == "cacheproxy; fwd=miss"
    assert upstream.total("GET", "/witherrors") == 2


async def test_update_time_requests_are_never_stored(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    for _ in range(2):
        r = await client.get(JOBS + "?update_time=1", headers=auth("alice"))
        assert r.headers["cache-status"] == "cacheproxy; fwd=request"
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.headers["cache-status"] == "cacheproxy; fwd=miss; stored"


async def test_upstream_down_gives_502_in_slurm_error_shape(
    client: httpx.AsyncClient, transport: object
) -> None:
    transport.down = True  # type: ignore[attr-defined]
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["errors"][0]["source"] == "cacheproxy"
    assert {"error", "error_number", "description"} <= set(doc["errors"][0])
    assert doc["warnings"] == []
    assert "meta" in doc


async def raw_call(app: CacheProxyApp, method: str, raw_path: bytes) -> tuple[int, bytes]:
    """Call the ASGI app with a raw path no HTTP client would send."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "client": ("127.0.0.1", 5),
        "headers": [(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"tok-alice")],
    }
    await app(scope, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]


async def test_bad_input_gets_400_not_500(app: CacheProxyApp) -> None:
    for path in (
        b"/slurm/v0.0.43/%zz",
        b"/slurm/v0.0.43/../jobs",
        b"/slurm/%ff%fe/jobs",
        b"/slurm/v0.0.43/./jobs",
        b"/slurm/v0.0.43/j%00obs",
        b"/" + b"a" * 9000,
    ):
        status, body = await raw_call(app, "GET", path)
        assert status in (400, 414), path
        assert orjson.loads(body)["errors"][0]["source"] == "cacheproxy"


async def test_trace_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.request("TRACE", JOBS, headers=auth("alice"))
    assert r.status_code == 405


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/_cacheproxy/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_concurrent_identical_gets_coalesce(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get("/slurm/v0.0.43/nodes", headers=auth("alice"))  # accept the credential
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(client.get(JOBS, headers=auth("alice"))) for _ in range(200)]
    await upstream.entered.wait()
    await asyncio.sleep(0.05)
    upstream.gate.set()
    responses = await asyncio.gather(*tasks)
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert upstream.total("GET", "/jobs") == 1
    collapsed = [r for r in responses if "collapsed" in r.headers["cache-status"]]
    assert len(collapsed) == 199


async def test_fetch_started_before_write_is_not_served_after_it(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    """The race: a GET's answer is decided upstream before a submit, and
    reaches the proxy after the submit's response went out."""
    await client.get("/slurm/v0.0.43/nodes", headers=auth("alice"))  # accept the credential
    gate = upstream.gate = asyncio.Event()
    early = asyncio.create_task(client.get(JOBS, headers=auth("alice")))
    await upstream.entered.wait()
    upstream.gate = None
    r = await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
    job_id = r.json()["job_id"]
    # A request arriving after the write must not join the pre-write fetch.
    late_task = asyncio.create_task(client.get(JOBS, headers=auth("alice")))
    await asyncio.sleep(0.05)
    gate.set()
    early_r = await early
    assert job_id not in [j["job_id"] for j in early_r.json()["jobs"]]  # it was concurrent
    late = await late_task
    assert "collapsed" not in late.headers["cache-status"]
    assert job_id in [j["job_id"] for j in late.json()["jobs"]]
    # and the pre-write answer was not stored over it
    again = await client.get(JOBS, headers=auth("alice"))
    assert job_id in [j["job_id"] for j in again.json()["jobs"]]


async def test_client_disconnect_does_not_cancel_shared_fetch(
    app: CacheProxyApp, client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get("/slurm/v0.0.43/nodes", headers=auth("alice"))  # accept the credential
    upstream.gate = asyncio.Event()
    first = asyncio.create_task(client.get(JOBS, headers=auth("alice")))
    await upstream.entered.wait()
    second = asyncio.create_task(client.get(JOBS, headers=auth("alice")))
    await asyncio.sleep(0.02)
    first.cancel()  # the leader's client goes away
    upstream.gate.set()
    r = await second
    assert r.status_code == 200
    assert upstream.total("GET", "/jobs") == 1
    third = await client.get(JOBS, headers=auth("alice"))
    assert third.headers["cache-status"].startswith("cacheproxy; hit")


async def test_failed_fetch_fails_all_waiters_and_stores_nothing(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    await client.get("/slurm/v0.0.43/nodes", headers=auth("alice"))  # accept the credential
    upstream.fail_next = 1
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(client.get(JOBS, headers=auth("alice"))) for _ in range(20)]
    await asyncio.sleep(0.05)
    upstream.gate.set()
    rs = await asyncio.gather(*tasks)
    assert {r.status_code for r in rs} == {500}
    assert len({r.content for r in rs}) == 1
    assert upstream.total("GET", "/jobs") == 1
    ok = await client.get(JOBS, headers=auth("alice"))
    assert ok.status_code == 200
    assert ok.headers["cache-status"] == "cacheproxy; fwd=miss; stored"


async def test_hits_are_served_compressed_to_clients_that_accept_it(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    for i in range(50):
        await client.post("/slurm/v0.0.43/job/submit", headers=auth("root"), content=b"%d" % i)
    plain = await client.get(JOBS, headers={**auth("root"), "Accept-Encoding": "identity"})
    assert plain.headers["cache-status"].endswith("stored")
    assert "content-encoding" not in plain.headers
    gz = await client.get(JOBS, headers={**auth("root"), "Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.headers["vary"] == "accept-encoding"
    assert gz.content == plain.content  # httpx decoded it: same bytes
    raw = await client.get(JOBS, headers={**auth("root"), "Accept-Encoding": "zstd, gzip;q=0.5"})
    assert raw.headers["content-encoding"] == "zstd"
    assert int(raw.headers["content-length"]) < len(plain.content)
    assert raw.content == plain.content  # decoded by httpx: the same bytes
    refused = await client.get(JOBS, headers={**auth("root"), "Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


async def test_expired_list_is_revalidated_with_update_time(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, clock: Clock
) -> None:
    upstream.clock = clock
    for version in ("v0.0.38", "v0.0.43"):  # 22.05 bare 304, 25.x "No job changes"
        path = f"/slurm/{version}/jobs"
        first = await client.get(path, headers=auth("root"))
        clock.advance(6)  # past the 5 s ttl
        again = await client.get(path, headers=auth("root"))
        assert again.status_code == 200
        assert again.headers["cache-status"] == "cacheproxy; fwd=stale; fwd-status=304; stored"
        assert again.content == first.content
        assert upstream.queries[-1].startswith(b"update_time=")
        hit = await client.get(path, headers=auth("root"))
        assert hit.headers["cache-status"].startswith("cacheproxy; hit")


async def test_revalidation_after_a_change_replaces_the_list(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, clock: Clock
) -> None:
    upstream.clock = clock
    await client.get(JOBS, headers=auth("root"))
    clock.advance(3)
    # A change the proxy did not see (sbatch on a login node)
    upstream.next_id += 1
    from tests.core.fake_slurmrestd import Job

    upstream.jobs[upstream.next_id] = Job(upstream.next_id, "alice")
    upstream.last_change = clock()
    clock.advance(3)
    r = await client.get(JOBS, headers=auth("root"))
    assert upstream.next_id in [j["job_id"] for j in r.json()["jobs"]]
    assert r.headers["cache-status"] == "cacheproxy; fwd=miss; stored"


async def test_clients_own_update_time_never_fills_the_cache(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, clock: Clock
) -> None:
    upstream.clock = clock
    r = await client.get("/slurm/v0.0.38/jobs?update_time=99999999999", headers=auth("root"))
    assert r.status_code == 304
    assert r.content == b""
    r = await client.get("/slurm/v0.0.38/jobs", headers=auth("root"))
    assert r.headers["cache-status"] == "cacheproxy; fwd=miss; stored"


async def test_answers_that_check_no_token_never_accept_it(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    """22.05 serves /openapi to any token: that must not make the token trusted."""
    await client.get(JOBS, headers=auth("bob"))  # bob's list is cached
    forged = auth("bob", "forged")
    r = await client.get("/openapi/v3", headers=forged)
    assert r.status_code == 200
    r = await client.get(JOBS, headers=forged)
    assert r.status_code == 500
    assert "hit" not in r.headers["cache-status"]


async def test_a_200_with_errors_is_not_acceptance(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, app: CacheProxyApp
) -> None:
    """slurmdbd answers a bad token with a 200 holding an authentication error."""
    from cacheproxy.core.rules import RuleSet

    assert app.proxy is not None
    app.proxy.rules = RuleSet.from_toml(
        '[[rule]]\nname="w"\npath="/slurm/{v}/witherrors"\nttl=30\ntags=["w"]\n'
    )
    for _ in range(2):
        r = await client.get("/slurm/v0.0.43/witherrors", headers=auth("alice"))
        assert r.headers["cache-status"] == "cacheproxy; fwd=miss"
    assert app.proxy.stats.auth_accepted == 0


def test_policy_trusts_only_complete_clean_answers() -> None:
    from cacheproxy.core.policy import credential_accepted, credential_refused, errors_benign

    js = b"application/json"
    assert credential_accepted(200, b'{"errors": [], "jobs": []}', js)
    assert not credential_accepted(200, None, js)  # body not seen whole
    auth_err = b'{"errors": [{"error_number": 1007, "error": "Protocol authentication error"}]}'
    assert not credential_accepted(200, auth_err, js)
    assert credential_refused(200, auth_err)
    nothing = b'{"errors": [{"error_number": 9003, "error": "Nothing found with query"}], "x": []}'
    assert errors_benign(nothing, js)
    assert credential_accepted(200, nothing, js)


async def test_large_entries_are_compressed_off_the_response_path(
    client: httpx.AsyncClient, app: CacheProxyApp
) -> None:
    from cacheproxy.core.rules import RuleSet

    assert app.proxy is not None
    app.proxy.rules = RuleSet.from_toml(
        '[[rule]]\nname="big"\npath="/slurm/{v}/big"\nttl=30\ntags=["big"]\n'
    )
    headers = {**auth("alice"), "X-Size": "300000", "Accept-Encoding": "gzip"}
    first = await client.get("/slurm/v0.0.43/big", headers=headers)
    assert first.headers["cache-status"] == "cacheproxy; fwd=miss; stored"
    assert "content-encoding" not in first.headers  # a miss is never recompressed
    await asyncio.gather(*app.proxy.fill._background)
    hit = await client.get("/slurm/v0.0.43/big", headers=headers)
    assert hit.headers["cache-status"].startswith("cacheproxy; hit")
    assert hit.headers["content-encoding"] == "gzip"
    assert hit.content == first.content


class _DownStore(MemoryStore):
    """A store that cannot answer (Redis down): every call fails."""

    async def lookup(self, *args: object, **kwargs: object) -> Lookup:  # type: ignore[override]
        raise StoreError("down")

    def lookup_now(self, *args: object, **kwargs: object) -> Lookup:  # type: ignore[override]
        raise StoreError("down")

    async def put(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        raise StoreError("down")

    async def bump(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        raise StoreError("down")

    async def accept(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        raise StoreError("down")


async def test_store_down_still_coalesces_but_keeps_read_your_writes(
    upstream: FakeSlurmrestd, transport: object
) -> None:
    app = CacheProxyApp(
        Settings(upstream="http://upstream.test:6820"), transport=transport, store=_DownStore()
    )
    await app.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
        ) as client:
            gate = upstream.gate = asyncio.Event()
            early = [asyncio.create_task(client.get(JOBS, headers=auth("alice"))) for _ in range(5)]
            await upstream.entered.wait()
            await asyncio.sleep(0.02)
            upstream.gate = None
            r = await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
            assert r.status_code == 200
            job_id = r.json()["job_id"]
            late = asyncio.create_task(client.get(JOBS, headers=auth("alice")))
            await asyncio.sleep(0.02)
            gate.set()
            early_rs = await asyncio.gather(*early)
            late_r = await late
        assert {x.status_code for x in early_rs} == {200}
        assert upstream.total("GET", "/jobs") == 2  # 5 early ones shared one fetch
        assert "collapsed" not in late_r.headers["cache-status"]
        assert job_id in [j["job_id"] for j in late_r.json()["jobs"]]
    finally:
        await app.shutdown()
