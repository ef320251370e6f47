#!/usr/bin/env bash
# Set up everything cacheproxy needs on a fresh Debian or Ubuntu machine with
# Python 3.11+: Debian packages when running as root, then a virtualenv in
# .venv with cacheproxy and its test/bench extras.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start for real: Redis and HAProxy (shared tier),
# nginx and wrk (comparisons and benchmarks), Chromium (status page), and a
# real Slurm (slurmctld, slurmd, slurmrestd with JWT, munge; slurmdbd on MariaDB).
DEB_PACKAGES=(
  redis-server haproxy nginx wrk chromium
  slurmctld slurmd slurmrestd slurm-wlm-jwt-plugin munge slurm-client
  slurmdbd mariadb-server
)

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
    for svc in redis-server haproxy nginx slurmctld slurmd slurmrestd slurmdbd munge mariadb; do
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

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,bench,e2e]'
