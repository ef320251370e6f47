"""The container image as built by ``Dockerfile``: installed from the lock,
run as an unprivileged user, and a health check that follows the server's
own settings (TLS included).

No Docker engine runs where the tests run, so the image is not built here;
the health check is run for real against ``cacheproxy serve`` started with
the environment a container gives it, and the Dockerfile is read for what
a build must do.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
OLD_PROBE = (
    "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_cacheproxy/health'"
    " % os.environ.get('CACHEPROXY_PORT', '6821'), timeout=2)"
)
"""The health check the image had before it read the settings: plain http."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    env.update(
        CACHEPROXY_HOST="0.0.0.0",  # as the image sets it
        CACHEPROXY_PORT=str(port),
        CACHEPROXY_UPSTREAM=f"http://127.0.0.1:{free_port()}",  # nothing listens
        **extra,
    )
    return env


@contextlib.contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    err = tmp_path / "stderr"
    with err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cacheproxy", "serve"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=e,
        )
    try:
        port = int(env["CACHEPROXY_PORT"])
        deadline = time.monotonic() + 30
        while True:  # listening (whatever it speaks) is enough to start
            assert proc.poll() is None, err.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cacheproxy.healthcheck"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def tls_env(tmp_path: Path) -> dict[str, str]:
    cert = trustme.CA().issue_cert("cacheproxy.example.org")  # not the probe's name
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return container_env(free_port(), CACHEPROXY_TLS_CERT=str(chain), CACHEPROXY_TLS_KEY=str(key))


def test_the_health_check_speaks_tls_when_the_server_does(
    tls_env: dict[str, str], tmp_path: Path
) -> None:
    with serving(tls_env, tmp_path):
        probe = healthcheck(tls_env)
        assert probe.returncode == 0, probe.stderr
        # The image's former probe asked plain http of a TLS listener: unhealthy.
        old = subprocess.run(
            [sys.executable, "-c", OLD_PROBE], env=tls_env, capture_output=True, timeout=30
        )
        assert old.returncode != 0


def test_the_health_check_on_plain_http(tmp_path: Path) -> None:
    env = container_env(free_port())
    with serving(env, tmp_path):
        probe = healthcheck(env)
        assert probe.returncode == 0, probe.stderr


def test_the_health_check_fails_when_nothing_answers() -> None:
    probe = healthcheck(container_env(free_port()))
    assert probe.returncode == 1
    assert probe.stderr.startswith("healthcheck: ")


def test_the_image_builds_from_the_lock_alone() -> None:
    # (tests/redis/test_deploy_files.py runs the HEALTHCHECK command and checks
    # the user; this checks what the build installs from.)
    assert "COPY pyproject.toml uv.lock" in DOCKERFILE
    assert re.search(r"uv sync --locked\b", DOCKERFILE)
    assert "pip install --require-hashes" in DOCKERFILE  # uv itself, by hash
    assert not re.search(r"pip install \.", DOCKERFILE)
