"""`cacheproxy bench` end to end: the real simulator and proxy, as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from cacheproxy.bench import procs, report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("cacheproxy.simulator.cli") is None,
        reason="the simulator (cacheproxy.simulator.cli) is not there yet",
    ),
]


def _bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "cacheproxy", "bench",
        "--duration", "5", "--users", "10",
        "--sim-jobs", "200", "--sim-nodes", "50",
        "--submit-rate", "1", "--cancel-rate", "0.5",
        "--drain", "10", "--output", str(tmp_path), "--quiet", *extra,
    ]  # fmt: skip
    # From another directory, like a user would: the children must still find cacheproxy.
    env = procs.child_env()
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)


def test_short_bench_writes_a_valid_report(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    (outdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    written = json.loads((outdir / "report.json").read_text())
    assert printed == written
    jsonschema.Draft202012Validator(report.load_schema()).validate(written)
    runs = {r["target"]: r for r in written["runs"]}
    why = json.dumps(
        {
            "notes": written["notes"],
            **{
                t: {k: r[k] for k in ("errors", "error_kinds", "error_examples", "ryw", "cache")}
                for t, r in runs.items()
            },
        },
        indent=1,
    )
    assert set(runs) == {"direct", "proxy"}
    assert runs["proxy"]["ryw_violations"] == 0, why
    assert runs["direct"]["ryw_violations"] == 0, why
    assert runs["proxy"]["ryw"]["checks"] > 0, why
    assert runs["proxy"]["hit_ratio"] > 0, why
    assert (outdir / "report.md").read_text().startswith("# cacheproxy bench report")
    assert (outdir / "latency-cdf.png").stat().st_size > 0
    assert (outdir / "upstream-rps.png").stat().st_size > 0
