"""The Grafana dashboard only queries metrics the proxy exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.upstream.protect import ProtectedTransport
from tests.ops.conftest import JOBS, AppFactory, auth

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
SHARED_TIER_ONLY = {
    "cacheproxy_store_circuit_open",
    "cacheproxy_tier_local_hits_total",
    "cacheproxy_tier_outage_hits_total",
}
"""Exported only with a Redis shared tier (tested with the store)."""
AFTER_AN_AUDIT = {"cacheproxy_shared_audits_total"}
"""A sample only once the audit of shared views compared two answers
(tests/scope/test_audit.py reads it)."""


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


async def test_dashboard_queries_exported_metrics(
    make_app: AppFactory, settings: Settings, transport: Any
) -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    assert dashboard["uid"] == "cacheproxy-overview"
    app: CacheProxyApp = await make_app(settings, transport=ProtectedTransport(transport))
    async with httpx.AsyncClient(  # served as `cacheproxy serve` does: with every step
        transport=httpx.ASGITransport(app=hardening.wrap(app)), base_url="http://proxy.test"
    ) as c:
        await c.get("/_cacheproxy/ready")
        await c.get(JOBS, headers=auth("alice"))
        await c.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
        text = (await c.get("/_cacheproxy/metrics")).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used = {m for e in _exprs(dashboard) for m in re.findall(r"\bcacheproxy_[a-z_]+", e)}
    unseen = SHARED_TIER_ONLY | AFTER_AN_AUDIT
    assert used - exported <= unseen, sorted(used - exported - unseen)
    # every family the proxy exports has a panel
    families = {f.name for f in text_string_to_metric_families(text)}
    shown = {re.sub(r"_(total|bucket|count|sum)\Z", "", m) for m in used}
    assert {f for f in families if f.startswith("cacheproxy_")} - shown <= {"cacheproxy_build_info"}


def test_dashboard_is_portable() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
