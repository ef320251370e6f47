"""Issue 14, defects 2, 4 and 7, in process: a write invalidates only what
slurmrestd may have changed, named by the job numbers slurmrestd acts on,
and a coalesced follower judges the leader's refusal by its whole answer.

Every test here failed on the code before the fix (seen with the fix
stashed); the cross-replica versions are in tests/redis/test_write_safety.py.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from cacheproxy.core.rules import RuleError, RuleSet, base_job_id
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.upstream.base import BufferedResponse, UpstreamRequest, UpstreamResponse
from tests.core.asgi_transport import ASGITransport
from tests.core.conftest import auth
from tests.core.fake_slurmrestd import FakeSlurmrestd, Job

V = "v0.0.43"


def status_of(r: httpx.Response) -> str:
    return r.headers.get("cache-status", "")


async def cached(client: httpx.AsyncClient, path: str, user: str = "alice") -> httpx.Response:
    """GET ``path`` until it is a hit (twice): the entry is in the cache."""
    first = await client.get(path, headers=auth(user))
    assert first.status_code == 200, first.text
    second = await client.get(path, headers=auth(user))
    assert "hit" in status_of(second), status_of(second)
    return second


async def fresh(client: httpx.AsyncClient, path: str, user: str = "alice") -> httpx.Response:
    """GET ``path``, asserting the cache did not answer it."""
    r = await client.get(path, headers=auth(user))
    assert r.status_code == 200, r.text
    assert "hit" not in status_of(r), f"{path}: served from the cache: {status_of(r)}"
    return r


def states(r: httpx.Response) -> set[str]:
    return {j["job_state"] for j in r.json()["jobs"]}


# -- defect 2: refused writes invalidate nothing ------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param("POST", "/nothing/here", {}, id="unknown-path-no-credentials"),
        pytest.param("POST", "/nothing/here", auth("alice", "forged"), id="unknown-path-forged"),
        pytest.param("POST", f"/slurm/{V}/job/submit", {}, id="submit-no-credentials"),
        pytest.param(
            "POST", f"/slurm/{V}/job/submit", auth("alice", "forged"), id="submit-refused-token"
        ),
        pytest.param("DELETE", f"/slurm/{V}/job/1001", {}, id="cancel-no-credentials"),
        pytest.param(
            "DELETE", f"/slurm/{V}/job/1001", auth("bob", "tok-alice"), id="cancel-name-mismatch"
        ),
    ],
)
async def test_a_write_slurmrestd_refuses_empties_no_cache(
    client: httpx.AsyncClient,
    app: CacheProxyApp,
    upstream: FakeSlurmrestd,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    """Before: tags were bumped before forwarding, so an unauthenticated
    ``POST /nothing/here`` (no rule: ``@all``) emptied every user's cache."""
    upstream.jobs[1001] = Job(1001, "alice")
    await cached(client, f"/slurm/{V}/jobs")
    await cached(client, f"/slurm/{V}/partitions", user="bob")
    r = await client.request(method, path, headers=headers, content=b"{}")
    assert r.status_code in (401, 404, 500), r.text
    assert "hit" in status_of(await client.get(f"/slurm/{V}/jobs", headers=auth("alice")))
    assert "hit" in status_of(await client.get(f"/slurm/{V}/partitions", headers=auth("bob")))
    assert app.proxy is not None
    assert dict(app.proxy.stats.invalidations) == {}
    assert upstream.jobs[1001].state == "PENDING"


async def test_an_accepted_write_still_invalidates_before_and_after(
    client: httpx.AsyncClient, app: CacheProxyApp, upstream: FakeSlurmrestd
) -> None:
    """Read-your-writes is kept: the submit is seen at once, and the accepted
    writer's bump before forwarding still happens (two bumps in all)."""
    before = await cached(client, f"/slurm/{V}/jobs")
    assert before.json()["jobs"] == []
    r = await client.post(f"/slurm/{V}/job/submit", headers=auth("alice"), content=b"{}")
    assert r.status_code == 200
    after = await fresh(client, f"/slurm/{V}/jobs")
    assert [j["job_id"] for j in after.json()["jobs"]] == [r.json()["job_id"]]
    assert app.proxy is not None
    assert app.proxy.stats.invalidations["jobs"] == 2


async def test_an_unaccepted_but_good_credential_invalidates_after_the_answer(
    client: httpx.AsyncClient, app: CacheProxyApp
) -> None:
    """carol's first request ever is a write: no bump before it (slurmrestd
    has not vouched for her yet), one after its 200."""
    await cached(client, f"/slurm/{V}/jobs")
    hdrs = {"X-SLURM-USER-NAME": "carol", "X-SLURM-USER-TOKEN": "tok-root"}
    r = await client.post(f"/slurm/{V}/job/submit", headers=hdrs, content=b"{}")
    assert r.status_code == 200
    assert app.proxy is not None
    assert app.proxy.stats.invalidations["jobs"] == 1
    await fresh(client, f"/slurm/{V}/jobs")


@pytest.mark.parametrize("junk", ["junk", "0", "-5", "12abc", "x" * 300, "1_2_3", "%20"])
async def test_a_junk_job_id_names_no_tag(
    client: httpx.AsyncClient, app: CacheProxyApp, junk: str
) -> None:
    """Before: ``DELETE job/<junk>`` bumped ``job:<junk>`` and
    ``db.job:<junk>``, tags named by the client and kept for an hour."""
    await cached(client, f"/slurm/{V}/partitions")
    r = await client.delete(f"/slurm/{V}/job/{junk}", headers=auth("alice"))
    assert r.status_code == 500
    assert app.proxy is not None
    bumped = {tag for inv in app.proxy.stats.recent_invalidations for tag in inv.tags}
    assert all(":" not in tag for tag in bumped), bumped
    # a GET of such an id is never cached (slurmrestd refuses it anyway)
    assert "fwd=" in status_of(await client.get(f"/slurm/{V}/job/{junk}", headers=auth("alice")))


# -- defect 4: the job number slurmrestd acts on --------------------------------


async def test_cancel_with_a_leading_zero_invalidates_job_124_in_both_families(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    upstream.jobs[124] = Job(124, "alice")
    paths = [
        f"/slurm/{V}/job/124",
        "/slurm/v0.0.40/job/124",
        f"/slurmdb/{V}/job/124",
        f"/slurm/{V}/job/00124",
    ]
    for path in paths:
        assert states(await cached(client, path)) == {"PENDING"}
    r = await client.delete(f"/slurm/{V}/job/0124", headers=auth("alice"))
    assert r.status_code == 200
    for path in paths:
        assert states(await fresh(client, path)) == {"CANCELLED"}, path


async def test_cancelling_an_array_job_invalidates_its_tasks(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd
) -> None:
    """Task 123_1 has its own id, 124: ``job/123`` cannot name it."""
    upstream.jobs[123] = Job(123, "alice", array_job_id=123, array_task_id=0)
    upstream.jobs[124] = Job(124, "alice", array_job_id=123, array_task_id=1)
    paths = [f"/slurm/{V}/job/124", f"/slurm/{V}/job/123_1", f"/slurmdb/{V}/job/124"]
    for path in paths:
        await cached(client, path)
    r = await client.delete(f"/slurm/{V}/job/123", headers=auth("alice"))
    assert r.status_code == 200
    for path in paths:
        assert states(await fresh(client, path)) == {"CANCELLED"}, path


@pytest.mark.parametrize("target", ["200", "200%2B1"])
async def test_cancelling_a_het_job_invalidates_its_components(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, target: str
) -> None:
    """Component 200+1 has its own id, 201."""
    upstream.jobs[200] = Job(200, "alice", het_job_id=200)
    upstream.jobs[201] = Job(201, "alice", het_job_id=200)
    paths = [f"/slurm/{V}/job/201", f"/slurm/{V}/job/200%2B1", f"/slurmdb/{V}/job/201"]
    for path in paths:
        await cached(client, path)
    r = await client.delete(f"/slurm/{V}/job/{target}", headers=auth("alice"))
    assert r.status_code == 200
    for path in paths:
        assert states(await fresh(client, path)) == {"CANCELLED"}, path


def test_tags_use_the_number_slurmrestd_parses() -> None:
    rules = RuleSet.default()
    for raw, number in [
        ("124", "124"),
        ("0124", "124"),
        ("+124", "124"),
        (" 124", "124"),
        ("123_1", "123"),
        ("123_[1-3]", "123"),
        ("123+1", "123"),
        ("123.batch", "123"),
    ]:
        assert base_job_id(raw) == number, raw
        m = rules.match("DELETE", ("slurm", V, "job", raw))
        assert {f"job:{number}", "jobs.each", f"db.job:{number}", "db.jobs.each"} <= set(
            m.invalidates
        )
        g = rules.match("GET", ("slurmdb", V, "job", raw))
        assert g.cache
        assert f"db.job:{number}" in g.tags
    for junk in ["junk", "0", "-1", "", "12abc", "99999999999", "1_", "1+"]:
        assert base_job_id(junk) is None, junk
        m = rules.match("DELETE", ("slurm", V, "job", junk))
        assert not any(":" in t for t in m.invalidates), m.invalidates
        assert not rules.match("GET", ("slurm", V, "job", junk)).cache


def test_a_tag_made_of_raw_client_input_is_refused() -> None:
    with pytest.raises(RuleError, match="only a parsed value"):
        RuleSet.from_toml('[[rule]]\npath="/slurm/{v}/node/{name}"\nttl=5\ntags=["node:{name}"]\n')


# -- defect 7: followers judge the leader's refusal by its body ----------------

REFUSED_2205 = orjson.dumps(
    {
        "meta": {},
        "errors": [{"error_number": -1, "error": "Unspecified error", "source": "slurm_load_node"}],
    }
)
REFUSED_DBD = orjson.dumps(
    {
        "meta": {},
        "errors": [
            {
                "error_number": 1007,
                "error": "Protocol authentication error",
                "description": "slurmdb_jobs_get error",
            }
        ],
        "jobs": [],
    }
)


class HeldRefusal:
    """The fake slurmrestd, except that once ``armed``, requests with
    ``token`` wait on ``gate`` and then get ``answer``: a credential
    slurmrestd no longer accepts, refused the way 22.05 (500) or slurmdbd
    (200) say it."""

    def __init__(self, inner: ASGITransport, token: str, answer: tuple[int, bytes]) -> None:
        self.inner = inner
        self.token = token.encode()
        self.answer = answer
        self.armed = False
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.armed and (b"x-slurm-user-token", self.token) in request.headers:
            self.entered.set()
            await self.gate.wait()
            status, body = self.answer
            return BufferedResponse(
                status=status,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
                body=body,
            )
        return await self.inner.send(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        pytest.param("/slurm/v0.0.38/nodes", (500, REFUSED_2205), id="22.05-500"),
        pytest.param("/slurmdb/v0.0.38/jobs", (200, REFUSED_DBD), id="slurmdbd-200-1007"),
    ],
)
async def test_a_follower_judges_the_leaders_refusal_by_its_body(
    upstream: FakeSlurmrestd, path: str, answer: tuple[int, bytes]
) -> None:
    """alice has two accepted tokens; slurmrestd has since stopped accepting
    the first.  A request with the second joins the first's flight: it must
    get its own answer, not the leader's refusal.  Before: the follower
    judged with an empty body, so only 401/403/511 were seen."""
    upstream.tokens["alice"] = "tok-old"
    held = HeldRefusal(ASGITransport(upstream), "tok-old", answer)
    app = CacheProxyApp(Settings(upstream="http://upstream.test:6820"), transport=held)
    await app.startup()
    proxy = app.proxy
    assert proxy is not None
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
        ) as c:
            # slurmrestd accepts both tokens, one after the other
            old = await c.get(f"/slurm/{V}/partitions", headers=auth("alice", "tok-old"))
            assert old.status_code == 200
            upstream.tokens["alice"] = "tok-new"
            new = await c.get(f"/slurm/{V}/jobs", headers=auth("alice", "tok-new"))
            assert new.status_code == 200
            held.armed = True

            leader = asyncio.create_task(c.get(path, headers=auth("alice", "tok-old")))
            await held.entered.wait()
            follower = asyncio.create_task(c.get(path, headers=auth("alice", "tok-new")))
            for _ in range(1000):  # bounded: until the follower has joined
                if proxy.stats.coalesced:
                    break
                await asyncio.sleep(0)
            assert proxy.stats.coalesced == 1
            held.gate.set()
            led, followed = await leader, await follower
    finally:
        await app.shutdown()
    assert (led.status_code, led.content) == answer
    assert followed.status_code == 200, followed.text
    assert followed.json()["errors"] == []
    assert followed.json()["meta"]["client"]["user"] == "alice"
