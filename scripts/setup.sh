#!/usr/bin/env bash
# Set up everything cacheproxy needs on a fresh Debian or Ubuntu machine with
# Python 3.11+: Debian packages when running as root, then .venv with exactly
# the locked versions (uv.lock) of cacheproxy's dependencies and extras.
# Idempotent: a second run changes nothing that is already right.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: cacheproxy needs Python 3.11 or newer ($PY is $("$PY" -V 2>&1 || echo missing))" >&2
  exit 2
fi

# Debian packages the tests start for real: Redis and HAProxy (shared tier),
# nginx and wrk (comparisons and benchmarks), Chromium (status page),
# Prometheus (promtool checks config/prometheus-alerts.yml), systemd
# (systemd-analyze verifies config/cacheproxy.service), and a
# real Slurm (slurmctld, slurmd, slurmrestd with JWT, munge; slurmdbd on MariaDB).
DEB_PACKAGES=(
  redis-server haproxy nginx wrk chromium prometheus systemd
  slurmctld slurmd slurmrestd slurm-wlm-jwt-plugin munge slurm-client
  slurmdbd mariadb-server
)
# Debian's own python3 has no venv module without python3-venv.
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  DEB_PACKAGES+=(python3-venv)
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The packages enable their services; the tests start their own on free
    # ports, so stop the packaged ones we just installed from holding ports.
    for svc in redis-server haproxy nginx prometheus slurmctld slurmd slurmrestd slurmdbd munge mariadb; do
      if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl stop "$svc" >/dev/null 2>&1 || true
      elif command -v service >/dev/null 2>&1; then
        service "$svc" stop >/dev/null 2>&1 || true
      fi
    done
  fi
else
  echo "setup: not root (or no apt-get): Debian packages are not installed;" \
       "tests that need them will say so." >&2
fi

# uv, pinned by hash, in a venv of its own (.tools): it is what installs the
# lock, so it is the one thing installed from outside it.
UV_PIN=$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' scripts/uv-requirements.txt)
if [ "$(.tools/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_PIN" ]; then
  rm -rf .tools
  "$PY" -m venv .tools
  .tools/bin/python -m pip install -q --require-hashes --no-deps \
    -r scripts/uv-requirements.txt
fi

# Exactly the lock: --locked refuses to run when uv.lock does not match
# pyproject.toml (run scripts/update-deps.sh), and uv never downloads a Python
# of its own here: the machine's is the one tested.
export UV_PYTHON_DOWNLOADS=never
# uv keeps what it downloads in .tools/uv-cache (empty on a fresh clone), even
# when UV_NO_CACHE is set: the deploy test (tests/ops/deploy_path.py) installs
# the lock again into a fresh venv, offline, from there (tests reach nothing
# but loopback).
export UV_CACHE_DIR="$PWD/.tools/uv-cache"
unset UV_NO_CACHE
.tools/bin/uv sync --locked --all-extras --python "$PY" --quiet
