"""report.json: what a run produces passes the shipped JSON Schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cacheproxy.bench import report, summary, workload
from tests.bench.helpers import run_against
from tests.bench.stubs import Forwarder, StubSlurm


def _validator() -> jsonschema.Draft202012Validator:
    schema = report.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
async def built(stub_slurm: StubSlurm, stale_cache: Forwarder) -> dict[str, Any]:
    runs = []
    for target, url in (("direct", stub_slurm.url), ("proxy", stale_cache.url)):
        await stub_slurm.reset(None)  # type: ignore[arg-type]
        result = await run_against(url, stub_slurm, duration=2.0)
        result.target = target
        upstream = sum(stub_slurm.by_route.values())
        runs.append(
            summary.summarize(
                result,
                upstream_requests=upstream,
                upstream_source="simulator",
                extra={"users": 6},
            )
        )
    spec = workload.WorkloadSpec(users=6, duration=2.0)
    config = {"mode": "simulator", "targets": ["direct", "proxy"], "workload": spec.to_json()}
    return report.build(config=config, runs=runs, notes=["test"])


def test_report_passes_schema(built: dict[str, Any], tmp_path: Path) -> None:
    _validator().validate(built)
    assert report.validate(built) == []
    report.write(tmp_path, built)
    again = json.loads((tmp_path / "report.json").read_text())
    _validator().validate(again)
    md = (tmp_path / "report.md").read_text()
    assert "| direct |" in md
    assert "| proxy |" in md
    proxy = next(r for r in built["runs"] if r["target"] == "proxy")
    direct = next(r for r in built["runs"] if r["target"] == "direct")
    assert proxy["hit_ratio"] > 0
    assert direct["hit_ratio"] == 0
    assert proxy["ryw_violations"] > 0  # the stale cache, as reported
    assert direct["reduction_factor"] == 1.0
    assert proxy["reduction_factor"] is not None


def test_schema_rejects_incomplete_runs(built: dict[str, Any]) -> None:
    broken = copy.deepcopy(built)
    del broken["runs"][0]["latency_ms"]["p99"]
    assert report.validate(broken)
    broken = copy.deepcopy(built)
    broken["runs"][0]["target"] = "squid"
    assert report.validate(broken)
