"""``PrivateData`` word by word, in every API version the simulator serves.

For each word a regular user sees only what Slurm shows them (rules cited in
cacheproxy/simulator/privatedata.py and the views), a coordinator also what
belongs to the accounts they coordinate, and root and an Operator see all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from cacheproxy.simulator import privatedata
from cacheproxy.simulator.model import Cluster
from cacheproxy.simulator.releases import VERSIONS
from tests.simulator.conftest import ROOT, auth, started

USER = "user001"  # acct02
COORD = "user002"  # acct03, coordinator of acct04
OPERATOR = "user099"
TRAINEE = "user010"  # acct01, which the "training" reservation names
PRIVILEGED = (ROOT, auth(OPERATOR))


@contextmanager
def private(words: str) -> Iterator[tuple[httpx.Client, Cluster]]:
    with (
        started(
            private_data=words,
            operators=frozenset({OPERATOR}),
            coordinators={COORD: ("acct04",)},
        ) as running,
        running.client() as c,
    ):
        yield c, running.app.cluster


def get(c: httpx.Client, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    r = c.get(path, headers=headers)
    return r.status_code, (r.json() if r.status_code != 404 else {})


def served(c: httpx.Client, family: str, route: str) -> list[str]:
    """The versions serving ``route`` (by the spec: e.g. no /shares in every version)."""
    out = [v for v in VERSIONS if c.get(f"/{family}/{v}/{route}", headers=ROOT).status_code != 404]
    assert out, route
    return out


def test_words_parse_as_slurm_reads_them() -> None:
    assert privatedata.parse("Jobs,NODES") == {"jobs", "nodes"}
    assert privatedata.parse("job,user") == {"jobs", "users"}  # xstrcasestr stems
    assert privatedata.parse("all") == set(privatedata.WORDS)
    assert privatedata.parse("none") == set() == privatedata.parse(False)
    assert privatedata.parse(True) == {"jobs"}  # the old boolean flag
    with pytest.raises(ValueError, match="unknown PrivateData word"):
        privatedata.parse("jobs,nodse")


def test_jobs_own_and_coordinated_accounts_in_every_version() -> None:
    with private("jobs") as (c, cluster):
        mine = {j.job_id for j in cluster.jobs.values() if j.user == USER}
        coord = {
            j.job_id for j in cluster.jobs.values() if j.user == COORD or j.account == "acct04"
        }
        assert mine
        assert coord - {j.job_id for j in cluster.jobs.values() if j.user == COORD}
        every = set(cluster.jobs)
        other = next(j for j in cluster.jobs.values() if j.user not in (USER, COORD))
        for v in served(c, "slurm", "jobs"):
            for who, expected in [(USER, mine), (COORD, coord)]:
                _, body = get(c, f"/slurm/{v}/jobs", auth(who))
                assert {j["job_id"] for j in body["jobs"]} == expected, (v, who)
            for headers in PRIVILEGED:
                _, body = get(c, f"/slurm/{v}/jobs", headers)
                assert {j["job_id"] for j in body["jobs"]} == every, v
            status, body = get(c, f"/slurm/{v}/job/{other.job_id}", auth(USER))
            assert status in (404, 500), v
            assert not body.get("jobs"), v
            if other.account == "acct04":
                continue
            status, body = get(c, f"/slurm/{v}/job/{other.job_id}", auth(OPERATOR))
            assert status == 200, v
            assert len(body["jobs"]) >= 1, v
        db_mine = {j.job_id for j in cluster.history.values() if j.user == USER}
        for v in served(c, "slurmdb", "jobs"):
            _, body = get(c, f"/slurmdb/{v}/jobs", auth(USER))
            assert {j["job_id"] for j in body["jobs"]} == db_mine, v
            _, body = get(c, f"/slurmdb/{v}/jobs", auth(OPERATOR))
            assert len(body["jobs"]) == len(cluster.history), v


@pytest.mark.parametrize("word", ["nodes", "partitions"])
def test_nodes_and_partitions_refused_to_non_operators(word: str) -> None:
    with private(word) as (c, cluster):
        node = next(iter(cluster.nodes))
        paths = {
            "nodes": ["nodes", f"node/{node}"],
            "partitions": ["partitions", "partition/normal"],
        }[word]
        for route in paths:
            for v in served(c, "slurm", route):
                status, body = get(c, f"/slurm/{v}/{route}", auth(USER))
                assert status == 500, (v, route)
                assert body["errors"], (v, route)
                assert not body.get(word), (v, route)
                assert not get(c, f"/slurm/{v}/{route}", auth(COORD))[1].get(word)
                for headers in PRIVILEGED:
                    status, body = get(c, f"/slurm/{v}/{route}", headers)
                    assert status == 200, (v, route)
                    assert body[word], (v, route)
        # The other collection stays visible, except that the data_parser
        # releases' /nodes loads partitions too.
        other = "partitions" if word == "nodes" else "nodes"
        for v in served(c, "slurm", other):
            status, _ = get(c, f"/slurm/{v}/{other}", auth(USER))
            legacy = v in ("v0.0.36", "v0.0.37", "v0.0.38")
            assert status == (500 if other == "nodes" and not legacy else 200), (v, other)


def test_reservations_only_those_the_user_may_use() -> None:
    with private("reservations") as (c, cluster):
        assert set(cluster.reservations) == {"maint", "training"}
        for v in served(c, "slurm", "reservations"):
            names = {
                who: {
                    r["name"]
                    for r in get(c, f"/slurm/{v}/reservations", auth(who))[1]["reservations"]
                }
                for who in (USER, TRAINEE)
            }
            assert names == {USER: set(), TRAINEE: {"training"}}, v
            for headers in PRIVILEGED:
                body = get(c, f"/slurm/{v}/reservations", headers)[1]
                assert {r["name"] for r in body["reservations"]} == {"maint", "training"}
            hidden = get(c, f"/slurm/{v}/reservation/maint", auth(TRAINEE))
            unknown = get(c, f"/slurm/{v}/reservation/nosuch", auth(TRAINEE))
            assert not hidden[1].get("reservations"), v
            assert hidden[0] == unknown[0], v
            assert get(c, f"/slurm/{v}/reservation/maint", auth(OPERATOR))[1]["reservations"]


def _share_names(body: dict[str, Any]) -> set[str]:
    return {s["name"] for s in body["shares"]["shares"]}


def test_usage_own_shares_and_coordinated_accounts() -> None:
    with private("usage") as (c, cluster):
        everything = {a.user or a.account for a in cluster.associations}
        acct04 = {a.user or a.account for a in cluster.associations if a.account == "acct04"}
        for v in served(c, "slurm", "shares"):
            assert _share_names(get(c, f"/slurm/{v}/shares", auth(USER))[1]) == {USER}, v
            assert _share_names(get(c, f"/slurm/{v}/shares", auth(COORD))[1]) == {COORD} | acct04
            for headers in PRIVILEGED:
                assert _share_names(get(c, f"/slurm/{v}/shares", headers)[1]) == everything


def test_users_themselves_and_their_associations() -> None:
    with private("users") as (c, cluster):
        for v in served(c, "slurmdb", "users"):
            users = get(c, f"/slurmdb/{v}/users", auth(COORD))[1]["users"]
            assert [u["name"] for u in users] == [COORD], v  # coordinators too
            assert get(c, f"/slurmdb/{v}/user/{USER}", auth(COORD))[1]["users"] == []
            for headers in PRIVILEGED:
                assert len(get(c, f"/slurmdb/{v}/users", headers)[1]["users"]) == len(cluster.users)
        acct04 = sum(1 for a in cluster.associations if a.account == "acct04")
        for v in served(c, "slurmdb", "associations"):
            mine = get(c, f"/slurmdb/{v}/associations", auth(USER))[1]["associations"]
            assert [(a["account"], a["user"]) for a in mine] == [("acct02", USER)], v
            coord = get(c, f"/slurmdb/{v}/associations", auth(COORD))[1]["associations"]
            assert len(coord) == 1 + acct04, v
            for headers in PRIVILEGED:
                body = get(c, f"/slurmdb/{v}/associations", headers)[1]
                assert len(body["associations"]) == len(cluster.associations), v


def test_accounts_only_coordinated_else_refused() -> None:
    with private("accounts") as (c, cluster):
        for v in served(c, "slurmdb", "accounts"):
            status, body = get(c, f"/slurmdb/{v}/accounts", auth(USER))
            assert status == 500, v
            assert body["errors"], v
            assert not body.get("accounts"), v
            status, body = get(c, f"/slurmdb/{v}/account/acct02", auth(USER))
            assert status == 500, v
            assert not body.get("accounts"), v
            names = [
                a["name"] for a in get(c, f"/slurmdb/{v}/accounts", auth(COORD))[1]["accounts"]
            ]
            assert names == ["acct04"], v
            for headers in PRIVILEGED:
                body = get(c, f"/slurmdb/{v}/accounts", headers)[1]
                assert len(body["accounts"]) == len(cluster.accounts), v


@pytest.mark.parametrize("words", ["none", "events,cloud"])
def test_nothing_private_everyone_sees_everything(words: str) -> None:
    """``events`` guards slurmdbd's cluster events and ``cloud`` shows powered-down
    cloud nodes: neither touches a route the simulator serves."""
    with private(words) as (c, cluster):
        for v in ("v0.0.38", "v0.0.41", "v0.0.44"):
            assert len(get(c, f"/slurm/{v}/jobs", auth(USER))[1]["jobs"]) == len(cluster.jobs)
            assert len(get(c, f"/slurm/{v}/nodes", auth(USER))[1]["nodes"]) == len(cluster.nodes)
            assert len(get(c, f"/slurmdb/{v}/users", auth(USER))[1]["users"]) == len(cluster.users)
            assert get(c, f"/slurmdb/{v}/accounts", auth(USER))[0] == 200
