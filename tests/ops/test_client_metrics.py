"""What clients see, in the metrics: every response counted by rule and
status class, and timed by rule and cache outcome, through the same pipeline
``cacheproxy serve`` runs (the hardening steps included)."""

from __future__ import annotations

import httpx

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.ops.conftest import JOBS, AppFactory, auth, samples, value


async def test_responses_by_status_class_and_duration_by_outcome(
    make_app: AppFactory, settings: Settings, upstream: FakeSlurmrestd
) -> None:
    app: CacheProxyApp = await make_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=hardening.wrap(app)), base_url="http://proxy.test"
    ) as c:
        assert (await c.get(JOBS, headers=auth("alice"))).status_code == 200  # miss
        assert (await c.get(JOBS, headers=auth("alice"))).status_code == 200  # hit
        missing = (await c.get(JOBS)).status_code  # no credential: 22.05 refuses it
        assert 400 <= missing < 500
        upstream.fail_next = 1
        assert (await c.get(JOBS, headers=auth("bob"))).status_code == 500
        r = await c.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
        submit_class = f"{r.status_code // 100}xx"
        m = samples((await c.get("/_cacheproxy/metrics")).text)
    responses = "cacheproxy_http_responses_total"
    assert value(m, responses, route="jobs", code="2xx") == 2
    assert value(m, responses, route="jobs", code="4xx") == 1
    assert value(m, responses, route="jobs", code="5xx") == 1
    assert value(m, responses, route="job-submit", code=submit_class) == 1
    duration = "cacheproxy_request_duration_seconds_count"
    assert value(m, duration, route="jobs", cache="hit") == 1
    assert value(m, duration, route="jobs", cache="fwd=miss") >= 2
    assert value(m, duration, route="job-submit", cache="fwd=method") == 1
    total = sum(v for (name, _), v in m.items() if name == duration)
    assert total == sum(v for (name, _), v in m.items() if name == responses)
    buckets = {
        labels: v
        for (name, labels), v in m.items()
        if name == "cacheproxy_request_duration_seconds_bucket"
        and ("cache", "hit") in labels
        and ("le", "+Inf") in labels
    }
    assert list(buckets.values()) == [1]
