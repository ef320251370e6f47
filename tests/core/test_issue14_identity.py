"""Issue 14, defects 1, 6, 8 and 10: every cache decision is made on the
request as forwarded and as slurmrestd parses it.

Each test here failed on the code before the fix (538cc74); the fake
authenticates as the release named (``FakeSlurmrestd.release``) and marks
each answer with the user it answered as and the query it read.
"""

from __future__ import annotations

import base64
import json
import tracemalloc

import httpx
import pytest

from cacheproxy.core.identity import IdentityResolver
from cacheproxy.core.plan import Planner
from cacheproxy.core.rules import RuleSet
from tests.clock import Clock
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd, Job

V = "v0.0.43"
JOBS = f"/slurm/{V}/jobs"


def jwt(sun: str, sig: str = "sig") -> str:
    """A JWT-shaped token naming ``sun``; the fake accepts it only if it is
    in its token map (its "signature check")."""

    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    payload = json.dumps({"sun": sun, "exp": 4_000_000_000}).encode()
    return ".".join([b64(b'{"alg":"HS256"}'), b64(payload), b64(sig.encode())])


@pytest.fixture
def later(upstream: FakeSlurmrestd) -> FakeSlurmrestd:
    """The fake as 23.11 (to 25.05): the name is optional, a token alone
    acts as its owner, JWTs are accepted for alice and bob."""
    upstream.release = "23.11"
    upstream.extra_tokens = {jwt("alice"): "alice", jwt("bob"): "bob"}
    upstream.jobs = {1: Job(1, "alice"), 2: Job(2, "bob")}
    return upstream


def user_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["meta"]["client"]["user"])


def alice() -> dict[str, str]:
    return {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": "tok-alice"}


# -- defect 1: identity from the forwarded request ---------------------------
async def test_connection_naming_the_user_name_cannot_store_bob_under_alice(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    assert user_of(await client.get(JOBS, headers=alice())) == "alice"
    trick = {
        "X-SLURM-USER-NAME": "alice",
        "X-SLURM-USER-TOKEN": "tok-bob",
        "Connection": "x-slurm-user-name",
    }
    r = await client.get(JOBS, headers=trick)
    assert user_of(r) == "bob"  # forwarded without the name: slurmrestd acts as bob
    assert [j["job_id"] for j in r.json()["jobs"]] == [2]
    r = await client.get(JOBS, headers=alice())
    assert user_of(r) == "alice"
    assert [j["job_id"] for j in r.json()["jobs"]] == [1]
    r = await client.get(JOBS, headers=trick)  # never a hit on alice's entry
    assert user_of(r) == "bob"


async def test_connection_dropping_a_forged_token_keys_on_the_bearer_owner(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    assert user_of(await client.get(JOBS, headers={"X-SLURM-USER-TOKEN": jwt("alice")})) == "alice"
    trick = {
        "X-SLURM-USER-TOKEN": jwt("alice", sig="forged"),
        "Authorization": "Bearer " + jwt("bob"),
        "Connection": "x-slurm-user-token",
    }
    assert user_of(await client.get(JOBS, headers=trick)) == "bob"
    r = await client.get(JOBS, headers={"X-SLURM-USER-TOKEN": jwt("alice")})
    assert user_of(r) == "alice"
    assert [j["job_id"] for j in r.json()["jobs"]] == [1]


async def test_connection_naming_accept_keys_on_the_format_forwarded(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    yaml = {**alice(), "Accept": "application/x-yaml"}
    r = await client.get(JOBS, headers={**yaml, "Connection": "accept"})
    assert r.headers["content-type"] == "application/json"  # Accept was not forwarded
    r = await client.get(JOBS, headers=yaml)
    assert r.headers["content-type"] == "application/x-yaml"


async def test_both_token_headers_are_answered_by_slurmrestd_not_the_cache(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    tok = {"X-SLURM-USER-TOKEN": jwt("alice")}
    assert user_of(await client.get(JOBS, headers=tok)) == "alice"
    r = await client.get(JOBS, headers={**tok, "Authorization": "Bearer " + jwt("bob")})
    assert r.status_code == 401  # ambiguous: slurmrestd refuses


async def test_an_empty_token_beside_a_bearer_is_not_the_bearer_alone(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    bearer = {"Authorization": "Bearer " + jwt("alice")}
    assert user_of(await client.get(JOBS, headers=bearer)) == "alice"
    r = await client.get(JOBS, headers={**bearer, "X-SLURM-USER-TOKEN": ""})
    assert r.status_code == 401


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
async def test_the_bearer_scheme_is_spelt_as_slurmrestd_spells_it(
    client: httpx.AsyncClient, later: FakeSlurmrestd, scheme: str
) -> None:
    assert user_of(await client.get(JOBS, headers={"Authorization": "Bearer " + jwt("alice")})) == (
        "alice"
    )
    r = await client.get(JOBS, headers={"Authorization": f"{scheme} " + jwt("alice")})
    assert r.status_code == 401


async def test_no_acceptance_is_recorded_for_a_pair_slurmrestd_never_saw(
    client: httpx.AsyncClient, later: FakeSlurmrestd, clock: Clock
) -> None:
    assert user_of(await client.get(JOBS, headers=alice())) == "alice"
    trick = {
        "X-SLURM-USER-NAME": "alice",
        "X-SLURM-USER-TOKEN": "tok-bob",
        "Connection": "x-slurm-user-name",
    }
    assert user_of(await client.get(JOBS, headers=trick)) == "bob"
    clock.advance(6)  # alice's entry expires; her credential is still trusted
    assert user_of(await client.get(JOBS, headers=alice())) == "alice"
    # bob names alice with his own token, no Connection: slurmrestd refuses
    r = await client.get(
        JOBS, headers={"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": "tok-bob"}
    )
    assert r.status_code == 511
    assert "job_id" not in r.text


# -- defect 8: the query as slurmrestd parses it -----------------------------
async def test_update_time_after_a_semicolon_is_never_cached(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    target = JOBS + "?x=1;update_time=99999999999"
    for _ in range(2):
        r = await client.get(target, headers=alice())
        assert r.status_code == 200
        assert "hit" not in r.headers["cache-status"]
    assert later.total("GET", "/jobs") == 2


@pytest.mark.parametrize(
    ("release", "first", "second"),
    [
        ("25.11", "a=1&a=2", "a=2&a=1"),  # every value kept, in order
        ("23.11", "flag", "flag="),  # true, then null
        ("23.11", "a=1", "a=1&a=1,2"),  # slurmrestd refuses the second
    ],
)
async def test_queries_slurmrestd_tells_apart_do_not_share_a_key(
    client: httpx.AsyncClient, later: FakeSlurmrestd, release: str, first: str, second: str
) -> None:
    later.release = release  # type: ignore[assignment]
    r1 = await client.get(f"{JOBS}?{first}", headers=alice())
    assert r1.status_code == 200
    r2 = await client.get(f"{JOBS}?{second}", headers=alice())
    assert "hit" not in r2.headers["cache-status"]
    assert later.total("GET", "/jobs") == 2


async def test_equivalent_spellings_of_a_query_share_a_key(
    client: httpx.AsyncClient, later: FakeSlurmrestd
) -> None:
    await client.get(f"{JOBS}?b=2&a=x+y", headers=alice())
    r = await client.get(f"{JOBS}?a=x%20y;b=%32", headers=alice())
    assert "hit" in r.headers["cache-status"]


# -- defect 10: a GET's body is its query since 23.11.6 -----------------------
async def test_a_get_with_a_body_is_forwarded_with_it_and_never_cached(
    client: httpx.AsyncClient, later: FakeSlurmrestd, transport: ASGITransport
) -> None:
    await client.get(JOBS, headers=alice())  # an entry the body request must not get
    for _ in range(2):
        r = await client.request("GET", JOBS, headers=alice(), content=b'{"users": "carol"}')
        assert r.status_code == 200
        assert r.json()["meta"]["query"] == {"users": "carol"}
        assert "hit" not in r.headers["cache-status"]
        assert transport.sent[-1].body == b'{"users": "carol"}'


# -- defect 6: memos bounded in bytes ----------------------------------------
def test_hostile_targets_and_names_cannot_grow_the_memos_past_their_bound() -> None:
    """400 requests of a 7 KiB target and a 6 KiB user name each: unbounded
    memos would keep about 10 MiB; the bounds hold them to 3 x 256 KiB."""
    bound = 256 * 1024
    resolver = IdentityResolver(b"k" * 32, memo_bytes=bound)
    planner = Planner(
        RuleSet.default(), resolver, max_url_bytes=8192, route_bytes=bound, plan_bytes=bound
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400):
            scope = {
                "method": "GET",
                "path": JOBS,
                "raw_path": JOBS.encode(),
                "query_string": b"x=%d&pad=" % i + b"p" * 7000,
                "headers": [
                    (b"x-slurm-user-name", b"u%d" % i + b"n" * 6000),
                    (b"x-slurm-user-token", b"t%d" % i),
                ],
            }
            planner.plan(scope)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4 * bound
