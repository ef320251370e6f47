"""Venvs for other people's Slurm clients, one per client, made by the test set-up.

Why not the project's venv: each client pins what it was generated with
(urllib3, pydantic, python-dateutil ...), and those pins conflict with
cacheproxy's own lock. Each client is installed from its hashed requirement
file (``requirements/<name>.txt``, re-pinned by ``requirements/compile.sh``)
into a venv under the user's cache directory (never the work tree), keyed by
the file's content and the interpreter, so a second session reuses it and a
re-pin makes a new one. The client then runs as a subprocess script
(``scripts/``) and prints what it deserialized as JSON.

A missing uv or a failed install fails the test: a skip here would hide that
the clients were never run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUIREMENTS = HERE / "requirements"
SCRIPTS = HERE / "scripts"
CACHE_ENV = "CACHEPROXY_CLIENT_VENVS"
INSTALL_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0


class ClientFailed(AssertionError):
    """A client script exited non-zero: its stderr says why."""


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cacheproxy" / "client-venvs"


def uv() -> str:
    """The uv that scripts/setup.sh installs (pinned by hash), else one on PATH."""
    pinned = REPO / ".tools" / "bin" / "uv"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("uv")
    if found is None:
        raise AssertionError("uv not found: run scripts/setup.sh (it installs .tools/bin/uv)")
    return found


def client_python(name: str) -> Path:
    """The interpreter of ``name``'s venv, created (once per requirement file) if missing."""
    requirements = REQUIREMENTS / f"{name}.txt"
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(sys.version.encode())
    target = cache_root() / f"{name}-{digest.hexdigest()[:16]}"
    python = target / "bin" / "python"
    done = target / ".installed"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        # Two test sessions at once (or xdist) build it once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return python
        if target.exists():
            shutil.rmtree(target)
        _run([uv(), "venv", "--quiet", "--python", sys.executable, str(target)])
        _run(
            [
                uv(),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(python),
                "--require-hashes",
                "--no-deps",
                "-r",
                str(requirements),
            ]
        )
        done.write_text(requirements.name + "\n")
    return python


def _run(argv: Sequence[str]) -> None:
    # uv reads no project configuration from the temp cwd; the user's UV_*
    # settings (an index mirror, a cache dir) still apply, as they should.
    proc = subprocess.run(
        argv,
        cwd=cache_root(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stderr}")


def run_client(python: Path, script: str, request: dict[str, Any]) -> Any:
    """Run ``scripts/<script>`` under ``python`` with ``request`` as JSON on stdin;
    return the JSON it prints. The script sees none of our packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), "-I", str(SCRIPTS / script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise ClientFailed(
            f"{script} {request.get('command')} exited {proc.returncode}:\n{proc.stderr[-6000:]}"
        )
    return json.loads(proc.stdout)
