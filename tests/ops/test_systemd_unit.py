"""config/cacheproxy.service and cacheproxy.env.example as an admin installs
them: ``systemd-analyze verify`` accepts the unit (with and without the JWT
credential lines), and the unit says what issue 19 found missing: a
multiprocess metrics directory for every worker, a stop timeout longer than
the read timeout, SIGHUP as the reload, and how a root-only JWT key is read."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cacheproxy.settings import Settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "config" / "cacheproxy.service"
ENV_EXAMPLE = REPO / "config" / "cacheproxy.env.example"


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", text.strip())
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def service() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    return unit["Service"]


def verify(text: str, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: Debian's systemd package (scripts/setup.sh) has it"
    # ExecStart must name an executable on this machine: this checkout's.
    here = str(Path(sys.executable).with_name("cacheproxy"))
    path = tmp_path / "cacheproxy.service"
    path.write_text(text.replace("/opt/cacheproxy/bin/cacheproxy", here))
    done = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in done.stderr.splitlines() if str(path) in line]
    assert done.returncode == 0, done.stderr
    assert complaints == [], done.stderr


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    verify(UNIT.read_text(), tmp_path)


def test_the_jwt_credential_lines_verify_once_uncommented(tmp_path: Path) -> None:
    key = tmp_path / "jwt_hs256.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    text = UNIT.read_text()
    assert "#LoadCredential=jwt_hs256.key:" in text
    assert "#Environment=CACHEPROXY_JWT_KEY=%d/jwt_hs256.key" in text
    text = re.sub(r"#LoadCredential=jwt_hs256.key:\S+", f"LoadCredential=jwt_hs256.key:{key}", text)
    text = text.replace("#Environment=CACHEPROXY_JWT_KEY", "Environment=CACHEPROXY_JWT_KEY")
    verify(text, tmp_path)


def test_every_worker_is_scraped_and_a_stop_drains() -> None:
    s = service()
    runtime = s["RuntimeDirectory"]
    env = dict(v.split("=", 1) for v in s["Environment"].split())
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(f"/run/{runtime}/")
    assert seconds(s["TimeoutStopSec"]) > Settings().read_timeout
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_env_example_names_real_settings_commented_or_not() -> None:
    known = {f"CACHEPROXY_{f.upper()}" for f in Settings.model_fields}
    named = set(re.findall(r"^#?(CACHEPROXY_[A-Z_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert named - known == set()
    assert {"CACHEPROXY_JWT_KEY", "CACHEPROXY_UPSTREAM_CA_FILE", "CACHEPROXY_WORKERS"} <= named
    read_timeout = re.search(r"^#?CACHEPROXY_READ_TIMEOUT=(\d+)", ENV_EXAMPLE.read_text(), re.M)
    assert read_timeout
    assert float(read_timeout.group(1)) < seconds(service()["TimeoutStopSec"])
