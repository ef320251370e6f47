"""--compare nginx: the generated configuration, and nginx caught by the RYW check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cacheproxy.bench import nginx
from tests.bench.helpers import run_against
from tests.bench.stubs import StubSlurm

needs_nginx = pytest.mark.skipif(nginx.find_nginx() is None, reason="nginx is not installed")


def test_ttls_come_from_default_rules() -> None:
    ttls = {loc.rule: loc.ttl for loc in nginx.default_rule_ttls()}
    assert set(ttls) == set(nginx.CACHED_RULES)
    assert ttls["jobs"] == 5
    assert ttls["nodes"] == 10
    assert ttls["partitions"] == 60


def test_config_keys_on_identity_and_locks(tmp_path: Path) -> None:
    text = nginx.render_config(tmp_path, 8081, "http://127.0.0.1:6820", nginx.default_rule_ttls())
    assert "proxy_cache_lock on;" in text
    assert "$http_x_slurm_user_name" in text
    assert "$http_x_slurm_user_token" in text
    assert "proxy_cache_valid 200 5s;" in text
    assert "server 127.0.0.1:6820;" in text


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/slurm/v0.0.43/jobs", "jobs"),
        ("/slurm/v0.0.43/jobs/", "jobs"),
        ("/slurm/v0.0.38/job/123", "job"),
        ("/slurm/v0.0.44/partitions", "partitions"),
        ("/slurm/v0.0.43/job/submit", "job"),
        ("/slurmdb/v0.0.43/jobs", None),
        ("/slurm/v0.0.43/jobs/state", None),
    ],
)
def test_location_regexes(path: str, rule: str | None) -> None:
    import re

    matched = [loc.rule for loc in nginx.default_rule_ttls() if re.search(loc.regex, path)]
    assert matched[:1] == ([rule] if rule else [])


@needs_nginx
def test_config_is_valid_for_nginx(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx.render_config(tmp_path, 8081, "http://127.0.0.1:6820", nginx.default_rule_ttls())
    )
    binary = nginx.find_nginx()
    assert binary is not None
    done = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@needs_nginx
async def test_nginx_breaks_read_your_writes(stub_slurm: StubSlurm, tmp_path: Path) -> None:
    service = await nginx.start_nginx(tmp_path, stub_slurm.url)
    try:
        result = await run_against(service.url, stub_slurm)
    finally:
        service.stop()
    assert result.ryw.checks > 0
    assert result.ryw.violations > 0
    assert any(s.cache == "hit" for s in result.samples)
