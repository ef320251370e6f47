#!/usr/bin/env bash
# The main job: set up, then benchmark the proxy against the built-in
# slurmrestd simulator (about a minute).  Extra arguments go to
# `cacheproxy bench` (e.g. --sweep users=10,100,1000 or --compare nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/cacheproxy bench "$@"
