"""The bench's pure parts: timetable, parsing answers, Cache-Status, capacity."""

from __future__ import annotations

import itertools

import orjson
import pytest

from cacheproxy.bench import cachestatus, capacity, slurmapi, summary, workload


def test_timetable_is_seeded_and_bounded() -> None:
    spec = workload.WorkloadSpec(users=20, duration=10.0)
    a = workload.build_timetable(spec)
    b = workload.build_timetable(spec)
    assert a.arrivals == b.arrivals
    assert all(0 <= x.t < spec.duration for x in a.arrivals)
    assert [x.t for x in a.arrivals] == sorted(x.t for x in a.arrivals)
    assert a.count(workload.DASHBOARD) > 0
    assert workload.build_timetable(workload.WorkloadSpec(users=20, seed=2)).arrivals != a.arrivals


def test_dashboards_follow_their_period() -> None:
    spec = workload.WorkloadSpec(users=3, duration=60.0, dashboard_period=(5.0, 30.0))
    tt = workload.build_timetable(spec)
    for client, period in enumerate(tt.dashboard_periods):
        assert 5.0 <= period <= 30.0
        times = [x.t for x in tt.arrivals if x.client == client and x.scenario == "dashboard"]
        gaps = {round(b - a, 6) for a, b in itertools.pairwise(times)}
        assert gaps <= {round(period, 6)}


def test_read_only_has_no_writes() -> None:
    tt = workload.build_timetable(workload.WorkloadSpec(users=50, writes=False, duration=60))
    assert not [x for x in tt.arrivals if x.scenario in workload.WRITES]


@pytest.mark.parametrize(
    ("body", "present"),
    [
        (b'{"jobs": [{"job_id": 1234, "name": "x"}]}', True),
        (b'{"jobs":[{"job_id":1234}]}', True),
        (b'{"jobs": [{"job_id": {"set": true, "infinite": false, "number": 1234}}]}', True),
        (b'{"jobs": [{"job_id": 12345}]}', False),
        (b'{"jobs": [{"array_job_id": 1234, "job_id": 7}]}', False),
        (b'{"jobs": [{"het_job_id": {"set": true, "number": 1234}, "job_id": 8}]}', False),
    ],
)
def test_lists_job(body: bytes, present: bool) -> None:
    assert slurmapi.lists_job(body, 1234) is present


def test_job_states_both_shapes() -> None:
    assert slurmapi.job_states(b'{"jobs": [{"job_state": "CANCELLED"}]}') == ["CANCELLED"]
    assert slurmapi.job_states(b'{"jobs": [{"job_state": ["PENDING", "REQUEUED"]}]}') == [
        "PENDING",
        "REQUEUED",
    ]
    assert slurmapi.job_states(b'{"jobs": []}') is None
    assert slurmapi.job_states(b"not json") is None


def test_submit_bodies_per_version() -> None:
    old = orjson.loads(slurmapi.submit_body("v0.0.38", "user001", 1))
    assert isinstance(old["job"]["environment"], dict)
    assert "script" in old
    new = orjson.loads(slurmapi.submit_body("v0.0.43", "user001", 1))
    assert isinstance(new["job"]["environment"], list)
    assert "script" in new["job"]
    assert slurmapi.submitted_job_id(b'{"job_id": 42, "step_id": "batch"}') == 42


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("cacheproxy; hit; ttl=3", cachestatus.HIT),
        ("cacheproxy; hit; detail=peer", cachestatus.HIT),
        ("cacheproxy; fwd=miss; stored", cachestatus.MISS),
        ("cacheproxy; fwd=miss; collapsed", cachestatus.COLLAPSED),
        ("cacheproxy; fwd=uri-miss", cachestatus.PASS),
        ("cacheproxy; fwd=method", cachestatus.PASS),
        ("cacheproxy; fwd=miss, upstreamcache; hit", cachestatus.MISS),
        (None, cachestatus.NONE),
    ],
)
def test_cache_status(header: str | None, kind: str) -> None:
    assert cachestatus.classify(header) == kind


def test_nginx_cache_status() -> None:
    assert cachestatus.classify(None, "HIT") == cachestatus.HIT
    assert cachestatus.classify(None, "EXPIRED") == cachestatus.MISS
    assert cachestatus.classify(None, "BYPASS") == cachestatus.PASS


def test_capacity_interpolates_and_extrapolates() -> None:
    pts = [(10, 2.0), (100, 20.0), (1000, 200.0)]
    assert capacity.max_users(pts, 20.0) == capacity.Capacity(100, False)
    assert capacity.max_users(pts, 110.0) == capacity.Capacity(550, False)
    assert capacity.max_users(pts, 1.0) == capacity.Capacity(5, False)
    far = capacity.max_users(pts, 400.0)
    assert far.extrapolated
    assert far.users == 2000
    assert capacity.parse_sweep("users=100,10,1000") == [10, 100, 1000]
    with pytest.raises(ValueError, match="users="):
        capacity.parse_sweep("clients=1,2")


def test_percentile() -> None:
    assert summary.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert summary.percentile([5.0], 99) == 5.0
    assert summary.per_second([(0.0, 0), (1.0, 10), (2.0, None), (3.0, 30)]) == [
        [1.0, 10.0],
        [3.0, 10.0],
    ]
