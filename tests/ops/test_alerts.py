"""config/prometheus-alerts.yml: valid for Prometheus (``promtool check
rules``), each alert fires (and stays quiet) as its unit tests in
``alerts-test.yml`` say (``promtool test rules``), and every metric it
queries is one the proxy exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.upstream.protect import ProtectedTransport
from tests.ops.conftest import JOBS, AppFactory, auth
from tests.ops.test_dashboard import SHARED_TIER_ONLY

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "config" / "prometheus-alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts-test.yml")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: Debian's prometheus package (scripts/setup.sh) has it"
    return path


def run(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_the_rules() -> None:
    out = run("check", "rules", str(ALERTS))
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass() -> None:
    out = run("test", "rules", str(UNIT_TESTS))
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    expected = {
        "CacheproxyClient5xxRate",
        "CacheproxyHitRatioDrop",
        "CacheproxyUpstreamBreakerOpen",
        "CacheproxyStaleServed",
        "CacheproxyReplicaNotReady",
        "CacheproxyDown",
        "CacheproxyRedisDown",
        "CacheproxyAuthBlocks",
        "CacheproxySharedRouteDemoted",
    }
    assert alerts == expected
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert tested == alerts


async def test_alerts_query_exported_metrics(
    make_app: AppFactory, settings: Settings, transport: Any
) -> None:
    app: CacheProxyApp = await make_app(settings, transport=ProtectedTransport(transport))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=hardening.wrap(app)), base_url="http://proxy.test"
    ) as c:
        await c.get("/_cacheproxy/ready")
        await c.get(JOBS, headers=auth("alice"))
        text = (await c.get("/_cacheproxy/metrics")).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bcacheproxy_[a-z_]+", e)}
    assert used
    assert used - exported <= SHARED_TIER_ONLY, sorted(used - exported)
