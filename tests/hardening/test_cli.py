"""`cacheproxy serve` as operators run it: TLS, the JSON access log on
stdout, the limits, in a subprocess stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import trustme

from tests.hardening.conftest import secret

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_tls_and_access_log(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    argv = [
        sys.executable, "-m", "cacheproxy", "serve",
        "--upstream", f"http://127.0.0.1:{free_port()}",  # nothing listens: 502s
        "--port", str(port), "--tls-cert", str(chain), "--tls-key", str(key),
        "--access-log", "--log-level", "debug", "--header-timeout", "2",
    ]  # fmt: skip
    token = secret("tok-cli-subprocess-31ab")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=o, stderr=e)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=5) as c:
            while True:
                assert proc.poll() is None, err.read_text()
                try:
                    if c.get("/_cacheproxy/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
            headers = {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": token}
            r = c.get("/slurm/v0.0.43/jobs", headers={**headers, "X-Request-ID": "cli-1"})
            assert r.status_code == 502
            assert r.json()["errors"][0]["source"] == "cacheproxy"
            assert r.headers["x-request-id"] == "cli-1"
            long_url = c.get("/slurm/v0.0.43/jobs?x=" + "a" * 9000, headers=headers)
            assert long_url.status_code == 414
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    lines = [orjson.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    jobs = [line for line in lines if line["path"] == "/slurm/v0.0.43/jobs"]
    assert jobs[0]["request_id"] == "cli-1"
    assert jobs[0]["status"] == 502
    assert jobs[0]["user"] == "alice"
    everything = out.read_text() + err.read_text()
    assert token not in everything
    assert "uvicorn.access" not in everything
