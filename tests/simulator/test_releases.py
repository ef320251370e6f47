"""``--style <release>`` serves exactly that release's versions and behaviours."""

from __future__ import annotations

import httpx
import pytest

from cacheproxy.simulator.releases import RELEASES, VERSIONS, style_map
from tests.simulator.conftest import ROOT, started


@pytest.mark.parametrize("style", list(RELEASES))
def test_a_release_serves_exactly_its_versions(style: str) -> None:
    wanted = set(RELEASES[style].versions)
    with started(style=style, jobs=5, nodes=3) as sim, sim.client() as c:
        for v in VERSIONS:
            r = c.get(f"/slurm/{v}/ping", headers=ROOT)
            assert (r.status_code == 200) == (v in wanted), (style, v, r.status_code)
            if v in wanted:
                meta = r.json()["meta"]
                release = (meta.get("slurm") or meta.get("Slurm"))["release"]
                assert release == RELEASES[style].full


def test_old_style_alias_still_serves_25x() -> None:
    assert set(style_map("25.x")) == {"v0.0.43", "v0.0.44"}
    assert set(style_map("all")) == set(VERSIONS)


def test_operations_follow_each_versions_spec() -> None:
    """/licenses from v0.0.38 (not in 22.05's v0.0.36/37); /jobs/state from v0.0.40;
    slurmdb ping from v0.0.42."""
    with started(style="all", jobs=5, nodes=3) as sim, sim.client() as c:
        assert c.get("/slurm/v0.0.36/licenses", headers=ROOT).status_code == 404
        assert c.get("/slurm/v0.0.37/licenses", headers=ROOT).status_code == 404
        assert c.get("/slurm/v0.0.38/licenses", headers=ROOT).status_code == 200
        assert c.get("/slurm/v0.0.39/jobs/state", headers=ROOT).status_code == 404
        assert c.get("/slurm/v0.0.40/jobs/state", headers=ROOT).status_code == 200
        assert c.get("/slurmdb/v0.0.41/ping", headers=ROOT).status_code == 404
        assert c.get("/slurmdb/v0.0.42/ping", headers=ROOT).status_code == 200


def test_reservation_delete_needs_the_25_05_daemon_under_old_parsers() -> None:
    with started(style="24.11", jobs=5, nodes=3) as sim, sim.client() as c:
        r = c.delete("/slurm/v0.0.42/reservation/maint", headers=ROOT)
        assert r.status_code == 404
    with started(style="25.05", jobs=5, nodes=3) as sim, sim.client() as c:
        r = c.delete("/slurm/v0.0.42/reservation/maint", headers=ROOT)
        assert r.status_code == 200


# ----------------------------------------------------------- body of a GET
def _get_with_body(c: httpx.Client, url: str, body: bytes) -> httpx.Response:
    headers = {**ROOT, "Content-Type": "application/json"}
    return c.request("GET", url, headers=headers, content=body)


@pytest.mark.parametrize("style", ["22.05", "23.02"])
def test_before_23_11_6_a_get_with_a_body_is_refused(style: str) -> None:
    version = RELEASES[style].versions[-1]
    with started(style=style, jobs=5, nodes=3) as sim, sim.client() as c:
        r = _get_with_body(c, f"/slurmdb/{version}/jobs", b'{"users": "user001"}')
    assert r.status_code == 400
    assert r.text == "Unexpected http body provided for non-POST method"
    assert r.headers["connection"].lower() == "close"


@pytest.mark.parametrize("style", ["23.11", "24.05", "25.11"])
def test_from_23_11_6_a_get_body_is_the_query(style: str) -> None:
    version = RELEASES[style].versions[-1]
    with started(style=style, jobs=60, nodes=4) as sim, sim.client() as c:
        user = next(iter(sim.app.cluster.jobs.values())).user
        url = f"/slurmdb/{version}/jobs"
        by_body = _get_with_body(c, url, b'{"users": "%s"}' % user.encode())
        by_query = c.get(url, params={"users": user}, headers=ROOT)
        everyone = c.get(url, headers=ROOT)
        both = c.request("GET", url + "?users=user002", headers=ROOT, content=b'{"users": "x"}')
    assert by_body.status_code == 200
    ids = [j["job_id"] for j in by_body.json()["jobs"]]
    assert ids == [j["job_id"] for j in by_query.json()["jobs"]]
    assert 0 < len(ids) < len(everyone.json()["jobs"])
    assert both.status_code == 400
    assert both.text == "Unexpected HTTP body provided when URL Query provided"


# ----------------------------------------------------------- update_time
def test_v0_0_39_words_the_no_change_warning_as_its_plugin_does() -> None:
    with started(style="23.02", jobs=5, nodes=3) as sim, sim.client() as c:
        t = int(sim.app.now()) + 10
        r = c.get("/slurm/v0.0.39/jobs", params={"update_time": t}, headers=ROOT)
        body = r.json()
    assert r.status_code == 200
    assert body["jobs"] == []
    assert body["warnings"][0]["description"] == f"No job changes since update_time={t}"
    assert "last_update" not in body  # not in v0.0.39's response


def test_data_parser_nodes_answer_304_when_only_partitions_are_unchanged() -> None:
    """slurmctld/nodes.c passes update_time to slurm_load_partitions(): its
    "no change" becomes the answer although nodes changed (22.05 does not)."""
    with started(style="all", jobs=5, nodes=3) as sim, sim.client() as c:
        t = int(sim.app.now()) + 1
        sim.app.advance(5)
        sim.app.cluster.changed["nodes"] = int(sim.app.now())  # a node changed after t
        modern = c.get("/slurm/v0.0.41/nodes", params={"update_time": t}, headers=ROOT)
        legacy = c.get("/slurm/v0.0.38/nodes", params={"update_time": t}, headers=ROOT)
    assert modern.status_code == 304
    assert legacy.status_code == 200
