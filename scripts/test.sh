#!/usr/bin/env bash
# Run every test (what CI runs): set up, lint, type-check, then pytest.
# Every server the tests use (Redis, HAProxy, nginx, the simulator, a real
# Slurm cluster) is started by the tests themselves on free loopback ports and
# stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict cacheproxy/"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
