"""`cacheproxy bench --upstream URL`: a real slurmrestd stands in as a stub.

The stub runs in a thread with its own event loop, the bench's CLI in the
test's thread (it runs its own loop), and the proxy as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheproxy.bench import cli, report
from tests.bench.stubs import StubSlurm

pytestmark = pytest.mark.slow


@pytest.fixture
def threaded_stub() -> Iterator[StubSlurm]:
    loop = asyncio.new_event_loop()
    stub = StubSlurm()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(stub.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(stub.stop())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield stub
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _run(tmp_path: Path, stub: StubSlurm, *extra: str) -> dict[str, object]:
    token = tmp_path / "token"
    token.write_text("SLURM_JWT=sim-token-user001\n")
    code = cli.main(
        [
            "--upstream", stub.url, "--user", "user001", "--token-file", str(token),
            "--duration", "3", "--users", "5", "--drain", "5",
            "--output", str(tmp_path / "out"), "--quiet", "--no-plots", *extra,
        ]
    )  # fmt: skip
    assert code == 0
    (outdir,) = (tmp_path / "out").iterdir()
    data: dict[str, object] = json.loads((outdir / "report.json").read_text())
    assert report.validate(data) == []
    return data


def test_read_only_by_default(tmp_path: Path, threaded_stub: StubSlurm) -> None:
    data = _run(tmp_path, threaded_stub)
    config = data["config"]
    assert isinstance(config, dict)
    assert config["mode"] == "upstream"
    assert config["workload"]["writes"] is False
    runs = {r["target"]: r for r in data["runs"]}  # type: ignore[attr-defined]
    assert runs["direct"]["upstream_source"] == "client"
    assert runs["proxy"]["upstream_source"] == "proxy"
    assert "POST /slurm/{v}/job/submit" not in threaded_stub.by_route
    assert runs["proxy"]["upstream_requests"] < runs["direct"]["upstream_requests"]
    # The stub's /diag counts one RPC per REST request, /diag itself left out.
    for run in runs.values():
        assert run["controller_rpcs"]["source"] == "diag"
        assert run["controller_rpcs"]["count"] >= run["upstream_requests"]


def test_allow_writes_checks_read_your_writes(tmp_path: Path, threaded_stub: StubSlurm) -> None:
    data = _run(tmp_path, threaded_stub, "--allow-writes", "--submit-rate", "2")
    runs = {r["target"]: r for r in data["runs"]}  # type: ignore[attr-defined]
    assert runs["proxy"]["ryw"]["checks"] > 0
    assert runs["proxy"]["ryw_violations"] == 0
