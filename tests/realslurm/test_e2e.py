"""The proxy in front of a real slurmrestd 22.05: the claims that matter, proven.

Third-party clients (the generated v0.0.38 one among them) run in venvs of
their own: test_clients.py.

Each test states one promise the proxy makes to slurmrestd's clients and
checks it against the real daemon, never against our own idea of it:
unchanged client behaviour, identical bodies, read-your-writes, PrivateData
isolation, coalescing (counted by slurmctld itself) and honest headers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.realslurm.cluster import API, RealSlurmCluster
from tests.realslurm.conftest import ProxyProcess, job_body
from tests.realslurm.helpers import burst, cache_status, is_hit, listed_jobs, masked

pytestmark = pytest.mark.realslurm

V = f"/slurm/{API}"


def auth(cluster: RealSlurmCluster, user: str) -> dict[str, str]:
    return cluster.headers(user)


def job_ids(resp: httpx.Response) -> dict[int, str]:
    """job id -> state, from a 200 /jobs or /job/{id} body."""
    assert resp.status_code == 200, (resp.status_code, resp.text[:500])
    return {int(j["job_id"]): j["job_state"] for j in resp.json()["jobs"]}


def job_info_rpcs(cluster: RealSlurmCluster) -> int:
    """slurmctld's own count of REQUEST_JOB_INFO (one per upstream GET /jobs).

    Read directly from slurmrestd as root: diag is never cached and costs only
    REQUEST_STATS_INFO, so it does not disturb the count it reads.
    """
    status, _, body = cluster.request("GET", f"{V}/diag", "root")
    assert status == 200, body
    for row in json.loads(body)["statistics"]["rpcs_by_message_type"]:
        if row["message_type"] == "REQUEST_JOB_INFO":
            return int(row["count"])
    return 0


# -- identical to direct ------------------------------------------------------


@pytest.fixture(scope="module")
def compare_proxy(proxy_factory: Callable[..., ProxyProcess]) -> ProxyProcess:
    """A proxy only the comparison uses: each path's first fetch is a miss."""
    return proxy_factory()


@pytest.mark.parametrize("path", ["ping", "jobs", "job/{job}", "nodes", "partitions", "licenses"])
def test_response_equals_direct(
    cluster: RealSlurmCluster,
    compare_proxy: ProxyProcess,
    held_job: Callable[..., int],
    path: str,
) -> None:
    """Through the proxy (a miss, then a hit) the body equals slurmrestd's own,
    fetched right after, apart from :data:`MASKED_KEYS`; so does Content-Type."""
    job = held_job("cpalice")
    url = f"{V}/{path.format(job=job)}"
    hdrs = auth(cluster, "cpalice")
    with httpx.Client(timeout=10) as client:
        for attempt in ("first", "second"):
            via = client.get(compare_proxy.url + url, headers=hdrs)
            direct = client.get(cluster.url + url, headers=hdrs)
            assert via.status_code == direct.status_code == 200, (attempt, via.text[:300])
            assert via.headers["content-type"] == direct.headers["content-type"]
            assert masked(via.json()) == masked(direct.json()), attempt
            cache_status(via)


# -- read your writes ---------------------------------------------------------


def test_read_your_writes(cluster: RealSlurmCluster, proxy: ProxyProcess) -> None:
    """A write through the proxy is visible to the writer's next read at once,
    even though that read was cached just before the write."""
    hdrs = auth(cluster, "cpalice")
    with httpx.Client(base_url=proxy.url, headers=hdrs, timeout=10) as client:
        for round_ in range(3):
            client.get(f"{V}/jobs")
            warm = client.get(f"{V}/jobs")
            assert is_hit(warm), f"round {round_}: /jobs not cached: {cache_status(warm)}"

            sub = client.post(f"{V}/job/submit", json=job_body(cluster, name=f"ryw-{round_}"))
            assert sub.status_code == 200, sub.text
            job_id = int(sub.json()["job_id"])
            seen = client.get(f"{V}/jobs")
            assert job_ids(seen).get(job_id) == "PENDING", (round_, cache_status(seen))

            client.get(f"{V}/job/{job_id}")
            assert job_ids(client.get(f"{V}/job/{job_id}")) == {job_id: "PENDING"}

            cancel = client.delete(f"{V}/job/{job_id}")
            assert cancel.status_code == 200, cancel.text
            after = client.get(f"{V}/jobs")
            assert job_ids(after).get(job_id) == "CANCELLED", (round_, cache_status(after))
            one = client.get(f"{V}/job/{job_id}")
            assert job_ids(one) == {job_id: "CANCELLED"}, (round_, cache_status(one))


# -- isolation (PrivateData=jobs) ---------------------------------------------


def test_private_data_isolation(
    cluster: RealSlurmCluster, proxy: ProxyProcess, held_job: Callable[..., int]
) -> None:
    """With PrivateData=jobs alice never sees bob's jobs through the proxy, and
    a request naming bob with a credential that is not bob's gets slurmrestd's
    own error, never bob's cached list, even right after bob filled it."""
    bob_job = held_job("cpbob", via=proxy.url)
    alice_job = held_job("cpalice", via=proxy.url)
    expired = cluster.mint_token("cpbob", lifespan=1)
    expires_at = time.time() + 2.1

    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for _ in range(2):  # second pass: answered from the cache
            bob = job_ids(client.get(f"{V}/jobs", headers=auth(cluster, "cpbob")))
            assert bob_job in bob
            assert alice_job not in bob
            alice = client.get(f"{V}/jobs", headers=auth(cluster, "cpalice"))
            assert alice_job in job_ids(alice)
            assert bob_job not in job_ids(alice)
            assert {j["user_name"] for j in alice.json()["jobs"]} == {"cpalice"}
        assert is_hit(client.get(f"{V}/jobs", headers=auth(cluster, "cpbob")))

        wrong: dict[str, Mapping[str, str]] = {
            "bob's name, garbage token": {
                "X-SLURM-USER-NAME": "cpbob",
                "X-SLURM-USER-TOKEN": "garbage",
            },
            "bob's name, alice's token": {
                "X-SLURM-USER-NAME": "cpbob",
                "X-SLURM-USER-TOKEN": cluster.tokens["cpalice"],
            },
            "bob's name, bob's token with a forged signature": {
                "X-SLURM-USER-NAME": "cpbob",
                "X-SLURM-USER-TOKEN": cluster.tokens["cpbob"].rsplit(".", 1)[0] + ".AAAA",
            },
            "bob's name, expired token": {
                "X-SLURM-USER-NAME": "cpbob",
                "X-SLURM-USER-TOKEN": expired,
            },
            "bob's name, no token": {"X-SLURM-USER-NAME": "cpbob"},
        }
        time.sleep(max(0.0, expires_at - time.time()))
        for label, hdrs in wrong.items():
            for path in (f"{V}/jobs", f"{V}/job/{bob_job}"):
                for attempt in range(2):
                    via = client.get(path, headers=dict(hdrs))
                    direct = httpx.get(cluster.url + path, headers=dict(hdrs), timeout=10)
                    where = f"{label}: GET {path} (attempt {attempt}) -> {via.status_code} "
                    where += f"{dict(via.headers)} {via.text[:300]!r}"
                    assert via.status_code == direct.status_code, where
                    assert via.status_code in (401, 500), where
                    assert via.headers["content-type"] == direct.headers["content-type"], where
                    assert not is_hit(via), where
                    assert not listed_jobs(via), where

        # alice asking for bob's job by id: whatever slurmrestd says, no data.
        via = client.get(f"{V}/job/{bob_job}", headers=auth(cluster, "cpalice"))
        direct = httpx.get(
            cluster.url + f"{V}/job/{bob_job}", headers=auth(cluster, "cpalice"), timeout=10
        )
        assert via.status_code == direct.status_code
        assert bob_job not in listed_jobs(via)


def test_token_never_checked_upstream_is_not_trusted(
    cluster: RealSlurmCluster, fresh_proxy: ProxyProcess, held_job: Callable[..., int]
) -> None:
    """slurmrestd 22.05 answers ``/openapi*`` with 200 to *any* token: it never
    asks slurmctld, so that 200 says nothing about the credential. Taking it
    as "accepted" would let anyone read a user's cached lists by naming them
    with a garbage token after one GET /openapi/v3. (A fresh proxy: a shared
    one would stay poisoned for the tests after this one.)"""
    bob_job = held_job("cpbob", via=fresh_proxy.url)
    forged: dict[str, dict[str, str]] = {
        "bob's name, garbage token": {"X-SLURM-USER-NAME": "cpbob", "X-SLURM-USER-TOKEN": "x"},
        "bob's name, alice's token": {
            "X-SLURM-USER-NAME": "cpbob",
            "X-SLURM-USER-TOKEN": cluster.tokens["cpalice"],
        },
    }
    with httpx.Client(base_url=fresh_proxy.url, timeout=30) as client:
        client.get(f"{V}/jobs", headers=auth(cluster, "cpbob"))
        assert is_hit(client.get(f"{V}/jobs", headers=auth(cluster, "cpbob")))
        leaks = {}
        for label, hdrs in forged.items():
            spec = client.get("/openapi/v3", headers=hdrs)
            direct = httpx.get(cluster.url + "/openapi/v3", headers=hdrs, timeout=30)
            assert spec.status_code == direct.status_code == 200, "premise: any token gets it"
            for path in (f"{V}/jobs", f"{V}/job/{bob_job}"):
                via = client.get(path, headers=hdrs)
                if via.status_code == 200 or is_hit(via) or bob_job in listed_jobs(via):
                    leaks[f"{label}: GET {path}"] = (
                        via.status_code,
                        via.headers.get("cache-status"),
                        sorted(listed_jobs(via))[:5],
                    )
        assert not leaks, f"bob's cached data served after GET /openapi/v3: {leaks}"


# -- coalescing ---------------------------------------------------------------


def _submit_many(held_job: Callable[..., int], user: str, n: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: held_job(user), range(n)))


async def test_coalescing_counted_by_slurmctld(
    cluster: RealSlurmCluster, fresh_proxy: ProxyProcess, held_job: Callable[..., int]
) -> None:
    """50 concurrent identical GET /jobs cost slurmctld at most one
    REQUEST_JOB_INFO, by slurmctld's own count (not the proxy's).

    bob gets 100 held jobs first: his /jobs then takes slurmrestd tens of ms,
    so the 50 requests overlap the one upstream fetch (the case coalescing is
    for) instead of arriving after it and being mere cache hits.
    """
    await asyncio.to_thread(_submit_many, held_job, "cpbob", 100)
    hdrs = auth(cluster, "cpbob")

    # Control: the counter moves by one per direct GET /jobs.
    before = await asyncio.to_thread(job_info_rpcs, cluster)
    async with httpx.AsyncClient(timeout=30) as client:
        direct = await asyncio.gather(
            *(client.get(cluster.url + f"{V}/jobs", headers=hdrs) for _ in range(5))
        )
    assert all(r.status_code == 200 for r in direct)
    assert await asyncio.to_thread(job_info_rpcs, cluster) - before == 5

    # Warm-up: slurmrestd accepts the credential once (ping costs no JOB_INFO).
    async with httpx.AsyncClient(timeout=10) as client:
        ping = await client.get(fresh_proxy.url + f"{V}/ping", headers=hdrs)
    assert ping.status_code == 200

    before = await asyncio.to_thread(job_info_rpcs, cluster)
    responses = await burst(fresh_proxy.url + f"{V}/jobs", hdrs, 50)
    after = await asyncio.to_thread(job_info_rpcs, cluster)

    assert all(r.status == 200 for r in responses), {r.status for r in responses}
    assert len({r.body for r in responses}) == 1, "coalesced readers got different bodies"
    assert len(json.loads(responses[0].body)["jobs"]) >= 100
    statuses = Counter(r.headers.get("cache-status") for r in responses)
    detail = f"Cache-Status of the 50: {dict(statuses)}"
    assert after - before <= 1, f"{after - before} REQUEST_JOB_INFO for 50 GETs; {detail}"
    assert after - before == 1, f"no upstream request at all on an empty cache; {detail}"


# -- headers ------------------------------------------------------------------


def test_cache_status_and_unknown_path(cluster: RealSlurmCluster, proxy: ProxyProcess) -> None:
    """Every proxied response says what the cache did; a path the rules do not
    know passes through as slurmrestd's own 404 text/plain, never cached."""
    hdrs = auth(cluster, "cpalice")
    with httpx.Client(base_url=proxy.url, headers=hdrs, timeout=10) as client:
        for path in ("ping", "jobs", "nodes", "partitions"):
            cache_status(client.get(f"{V}/{path}"))
        for path in (f"{V}/no-such-thing", "/slurm/v0.0.39/jobs", "/nowhere"):
            direct = httpx.get(cluster.url + path, headers=hdrs, timeout=10)
            for _ in range(2):
                via = client.get(path)
                assert via.status_code == direct.status_code == 404, (path, via.text)
                assert via.headers["content-type"] == direct.headers["content-type"]
                assert via.headers["content-type"].startswith("text/plain")
                assert via.content == direct.content
                assert not is_hit(via), cache_status(via)


# -- an unresponsive slurmctld ------------------------------------------------


def test_slurmctld_outage_is_not_an_auth_failure(
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    """A stuck slurmctld must not lock users out of the proxy once it is back.

    slurmrestd 22.05 answers a *valid* token, while slurmctld does not answer,
    with the very 500 it gives a wrong token (error_number -1, "Unspecified
    error"). If the proxy counts those as authentication failures, a short
    controller hiccup under a polling dashboard blocks the client address,
    and with it every user behind it, long after slurmctld recovered.
    A cluster of its own (MessageTimeout=3 keeps the outage short) and a
    proxy with a low failure limit (the default is 30) keep this quick.
    """
    limit = 4
    with RealSlurmCluster(extra_conf=("MessageTimeout=3",)) as other:
        p = proxy_factory("--auth-fail-limit", str(limit), upstream=other.url)
        alice, bob = other.headers("cpalice"), other.headers("cpbob")
        with httpx.Client(base_url=p.url, timeout=30) as client:
            assert client.get(f"{V}/jobs", headers=alice).status_code == 200
            assert client.get(f"{V}/jobs", headers=bob).status_code == 200

            other.pause("slurmctld")
            try:
                with ThreadPoolExecutor(limit + 2) as pool:
                    during = list(
                        pool.map(
                            lambda _: client.get(f"{V}/ping", headers=alice),
                            range(limit + 2),
                        )
                    )
                direct = httpx.get(other.url + f"{V}/ping", headers=alice, timeout=30)
            finally:
                other.resume("slurmctld")
            # The premise: slurmrestd's own answer to a valid token meanwhile.
            assert direct.status_code == 500, direct.text
            assert '"error_number": -1' in direct.text
            assert {r.status_code for r in during} <= {500, 429}

            deadline = time.monotonic() + 20
            while other.request("GET", f"{V}/ping", "cpalice")[0] != 200:
                assert time.monotonic() < deadline, "slurmctld did not come back"
                time.sleep(0.2)
            after = {
                "alice ping": client.get(f"{V}/ping", headers=alice),
                "bob jobs": client.get(f"{V}/jobs", headers=bob),
            }
            bad = {
                k: (r.status_code, r.headers.get("cache-status"), r.text[:200])
                for k, r in after.items()
                if r.status_code != 200
            }
            assert not bad, (
                "slurmctld is back and slurmrestd answers 200, but the proxy refuses "
                f"valid credentials after {limit + 2} requests during the outage: {bad}"
            )
