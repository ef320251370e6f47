"""Running the load generator against a URL, for the tests."""

from __future__ import annotations

from dataclasses import replace

from cacheproxy.bench import identities, workload
from cacheproxy.bench.httpclient import HttpClient
from cacheproxy.bench.loadgen import JobPool, LoadGenerator, RunResult
from tests.bench.stubs import StubSlurm

WRITE_HEAVY = workload.WorkloadSpec(
    users=6,
    duration=3.0,
    dashboard_period=(0.5, 1.0),
    squeue_period=2.0,
    showjob_period=3.0,
    sinfo_period=5.0,
    sacctmgr_period=5.0,
    submit_rate=4.0,
    cancel_rate=2.0,
)
"""A short, write-heavy mix: many read-your-writes checks in a few seconds."""


def pool_of(stub: StubSlurm) -> JobPool:
    by_user: dict[str, list[int]] = {}
    for job in stub.jobs.values():
        by_user.setdefault(job["user_name"], []).append(job["job_id"])
    return JobPool(by_user, list(stub.jobs))


async def run_against(
    url: str, stub: StubSlurm, spec: workload.WorkloadSpec = WRITE_HEAVY, **kw: object
) -> RunResult:
    spec = replace(spec, **kw)  # type: ignore[arg-type]
    tt = workload.build_timetable(spec)
    async with HttpClient(url, connections=32, timeout=10.0) as http:
        gen = LoadGenerator(
            "proxy", http, tt, identities.for_simulator(spec.users), pool_of(stub), drain=10.0
        )
        return await gen.run()
