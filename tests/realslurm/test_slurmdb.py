"""``/slurmdb/`` through the proxy, against a real slurmdbd on its own mariadbd.

Why these matter most: slurmdbd reads cost 90 ms to 1.3 s each (22.05 on one
machine), so they are where caching pays, and where a leak would expose
accounting data. Upstream work is counted by slurmdbd itself (its diag's
``RPCs``), never by the proxy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest

from tests.realslurm.cluster import API, RealSlurmCluster
from tests.realslurm.conftest import ProxyProcess, job_body
from tests.realslurm.helpers import MASKED_KEYS, RawResponse, burst, is_hit, masked

pytestmark = pytest.mark.realslurm

DB = f"/slurmdb/{API}"

MAIN_RPC = {
    "associations": "DBD_GET_ASSOCS",
    "users": "DBD_GET_USERS",
    "accounts": "DBD_GET_ACCOUNTS",
    "clusters": "DBD_GET_CLUSTERS",
    "tres": "DBD_GET_TRES",
    "config": "DBD_GET_WCKEYS",
}
"""The slurmdbd RPC each read costs exactly once (measured on 22.05): the
counter that says whether a request reached slurmdbd."""


def dbd_rpcs(cluster: RealSlurmCluster) -> Counter[str]:
    """slurmdbd's own RPC counts (direct, as root; diag is never cached)."""
    status, _, body = cluster.request("GET", f"{DB}/diag", "root", timeout=30)
    assert status == 200, body
    return Counter({r["rpc"]: int(r["count"]) for r in json.loads(body)["statistics"]["RPCs"]})


@pytest.fixture(scope="module")
def db_proxy(
    dbd_cluster: RealSlurmCluster, proxy_factory: Callable[..., ProxyProcess]
) -> ProxyProcess:
    return proxy_factory(upstream=dbd_cluster.url)


@pytest.fixture
def running_jobs(dbd_cluster: RealSlurmCluster) -> Iterator[dict[str, int]]:
    """One running job each for alice and bob, already recorded by slurmdbd.

    Not held: slurmctld tells slurmdbd about a job only once it is eligible,
    2 to 4 s after submission here; the fixture waits for that.
    """
    made: dict[str, int] = {}
    for user in ("cpalice", "cpbob"):
        status, _, body = dbd_cluster.request(
            "POST", f"/slurm/{API}/job/submit", user, job_body(dbd_cluster, hold=False)
        )
        assert status == 200, body
        made[user] = int(json.loads(body)["job_id"])
    try:
        deadline = time.monotonic() + 30
        while True:
            status, _, body = dbd_cluster.request("GET", f"{DB}/jobs", "root", timeout=30)
            recorded = {int(j["job_id"]) for j in json.loads(body).get("jobs", [])}
            if set(made.values()) <= recorded:
                break
            assert time.monotonic() < deadline, f"slurmdbd never recorded {made}"
            time.sleep(0.3)
        yield made
    finally:
        for user, job_id in made.items():
            dbd_cluster.request("DELETE", f"/slurm/{API}/job/{job_id}", user)


def db_jobs(resp: httpx.Response | RawResponse) -> set[int]:
    body = resp.content if isinstance(resp, httpx.Response) else resp.body
    try:
        data = json.loads(body)
    except ValueError:
        return set()
    return {int(j["job_id"]) for j in (data.get("jobs") or [])} if isinstance(data, dict) else set()


@pytest.mark.parametrize("path", sorted(MAIN_RPC))
def test_slurmdb_read_is_cached_equal_and_spares_slurmdbd(
    dbd_cluster: RealSlurmCluster, db_proxy: ProxyProcess, path: str
) -> None:
    """Miss then hit: both equal slurmdbd's own answer, and the hit costs
    slurmdbd nothing (its RPC counter does not move)."""
    rpc = MAIN_RPC[path]
    hdrs = dbd_cluster.headers("root")
    with httpx.Client(timeout=30) as client:
        before = dbd_rpcs(dbd_cluster)[rpc]
        first = client.get(db_proxy.url + f"{DB}/{path}", headers=hdrs)
        direct = client.get(dbd_cluster.url + f"{DB}/{path}", headers=hdrs)
        middle = dbd_rpcs(dbd_cluster)[rpc]
        t0 = time.monotonic()
        second = client.get(db_proxy.url + f"{DB}/{path}", headers=hdrs)
        hit_seconds = time.monotonic() - t0
        after = dbd_rpcs(dbd_cluster)[rpc]

    assert first.status_code == direct.status_code == second.status_code == 200
    assert first.headers["content-type"] == direct.headers["content-type"]
    assert masked(first.json()) == masked(direct.json()), f"masked: {sorted(MASKED_KEYS)}"
    assert second.content == first.content
    assert middle - before == 2, "one fetch by the proxy and one direct"
    assert is_hit(second), (
        f"{second.headers.get('cache-status')}; the body's errors: {first.json()['errors']}"
    )
    assert after == middle, f"a hit reached slurmdbd: {rpc} {middle} -> {after}"
    assert hit_seconds < 0.1, f"a hit took {hit_seconds:.3f} s"


async def test_slurmdb_coalescing(
    dbd_cluster: RealSlurmCluster, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    """30 concurrent GET associations (about 0.3 s each upstream) cost
    slurmdbd one DBD_GET_ASSOCS."""
    proxy = proxy_factory(upstream=dbd_cluster.url)
    hdrs = dbd_cluster.headers("cpalice")
    async with httpx.AsyncClient(timeout=30) as client:  # accept the credential
        assert (await client.get(proxy.url + f"/slurm/{API}/ping", headers=hdrs)).status_code == 200
    before = (await asyncio.to_thread(dbd_rpcs, dbd_cluster))["DBD_GET_ASSOCS"]
    t0 = time.monotonic()
    responses = await burst(proxy.url + f"{DB}/associations", hdrs, 30)
    took = time.monotonic() - t0
    after = (await asyncio.to_thread(dbd_rpcs, dbd_cluster))["DBD_GET_ASSOCS"]
    statuses = Counter(r.headers.get("cache-status") for r in responses)
    assert all(r.status == 200 for r in responses), statuses
    assert len({r.body for r in responses}) == 1
    assert after - before == 1, f"{after - before} DBD_GET_ASSOCS in {took:.2f} s: {statuses}"


def test_slurmdb_config_is_not_shared_with_a_non_admin(
    dbd_cluster: RealSlurmCluster, db_proxy: ProxyProcess
) -> None:
    """root's config (1.3 s upstream), cached or not, is root's: alice still
    gets slurmdbd's own permission error, every time."""
    with httpx.Client(base_url=db_proxy.url, timeout=60) as client:
        for _ in range(2):
            root = client.get(f"{DB}/config", headers=dbd_cluster.headers("root"))
            assert root.status_code == 200
        direct = httpx.get(
            dbd_cluster.url + f"{DB}/config", headers=dbd_cluster.headers("cpalice"), timeout=60
        )
        assert direct.status_code == 500
        for _ in range(2):
            via = client.get(f"{DB}/config", headers=dbd_cluster.headers("cpalice"))
            assert via.status_code == direct.status_code, via.text[:300]
            assert not is_hit(via)
            assert via.json()["errors"] == direct.json()["errors"]


def test_slurmdb_jobs_private_and_auth_errors_not_trusted(
    dbd_cluster: RealSlurmCluster,
    proxy_factory: Callable[..., ProxyProcess],
    running_jobs: dict[str, int],
) -> None:
    """PrivateData=jobs in slurmdbd holds through the proxy; and slurmdbd's
    answer to a credential it refuses (a 200 whose ``errors`` says
    "Protocol authentication error") must not make the proxy trust that
    credential: right after it, bob's name with alice's token must still get
    no bob data from /slurm/ or /slurmdb/, even though bob's lists are cached."""
    alice_job, bob_job = running_jobs["cpalice"], running_jobs["cpbob"]
    alice, bob = dbd_cluster.headers("cpalice"), dbd_cluster.headers("cpbob")
    forged: Mapping[str, str] = {
        "X-SLURM-USER-NAME": "cpbob",
        "X-SLURM-USER-TOKEN": dbd_cluster.tokens["cpalice"],
    }
    db_proxy = proxy_factory(upstream=dbd_cluster.url)  # its own: this test may poison it
    with httpx.Client(base_url=db_proxy.url, timeout=30) as client:
        for _ in range(2):
            seen = db_jobs(client.get(f"{DB}/jobs", headers=alice))
            assert alice_job in seen
            assert bob_job not in seen
            seen = db_jobs(client.get(f"{DB}/jobs", headers=bob))
            assert bob_job in seen
            assert alice_job not in seen
            assert bob_job in db_jobs(client.get(f"/slurm/{API}/jobs", headers=bob))
        assert is_hit(client.get(f"{DB}/jobs", headers=bob))
        assert is_hit(client.get(f"/slurm/{API}/jobs", headers=bob))

        # slurmdbd's own verdict on the forged credential: a 200 with an error.
        refused = client.get(f"{DB}/jobs", headers=dict(forged))
        direct = httpx.get(dbd_cluster.url + f"{DB}/jobs", headers=dict(forged), timeout=30)
        assert refused.status_code == direct.status_code
        assert direct.json()["errors"], "premise: slurmdbd refuses the forged credential"
        assert not db_jobs(refused)

        leaks = {}
        for path in (f"{DB}/jobs", f"/slurm/{API}/jobs", f"/slurm/{API}/job/{bob_job}"):
            via = client.get(path, headers=dict(forged))
            if bob_job in db_jobs(via) or is_hit(via):
                leaks[path] = (via.status_code, via.headers.get("cache-status"))
        assert not leaks, (
            "after slurmdbd answered the forged credential (bob's name, alice's token) with "
            f"200 + 'Protocol authentication error', the proxy served bob's data: {leaks}"
        )
