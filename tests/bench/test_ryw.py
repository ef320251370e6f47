"""Read-your-writes detection: a cache that never invalidates is caught; a
correct path (pass-through, the real proxy) reports no violation."""

from __future__ import annotations

from pathlib import Path

from cacheproxy.bench import procs
from tests.bench.helpers import run_against
from tests.bench.stubs import Forwarder, StubSlurm


async def test_stale_cache_is_caught(stub_slurm: StubSlurm, stale_cache: Forwarder) -> None:
    result = await run_against(stale_cache.url, stub_slurm)
    ryw = result.ryw
    assert ryw.checks > 0
    assert ryw.violations > 0
    kinds = {d["kind"] for d in ryw.details}
    assert kinds == {"submit", "cancel"}


async def test_direct_has_no_violation(stub_slurm: StubSlurm) -> None:
    result = await run_against(stub_slurm.url, stub_slurm)
    assert result.ryw.checks > 0
    assert result.ryw.violations == 0
    assert not [s for s in result.samples if s.failed]


async def test_passthrough_has_no_violation(stub_slurm: StubSlurm, passthrough: Forwarder) -> None:
    result = await run_against(passthrough.url, stub_slurm)
    assert result.ryw.checks > 0
    assert result.ryw.violations == 0


async def test_real_proxy_has_no_violation(stub_slurm: StubSlurm, tmp_path: Path) -> None:
    """`cacheproxy serve` in front of the stub: caches (hits) and still reads its writes."""
    proxy = await procs.start_proxy(tmp_path, stub_slurm.url)
    try:
        result = await run_against(proxy.url, stub_slurm)
    finally:
        proxy.stop()
    assert result.ryw.checks > 0
    assert result.ryw.violations == 0, result.ryw.details
    assert not [s for s in result.samples if s.failed]
    assert any(s.cache == "hit" for s in result.samples)
