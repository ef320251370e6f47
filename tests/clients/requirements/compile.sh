#!/usr/bin/env bash
# Re-pin the third-party clients' requirement files, every file hashed.
# Each client's pins conflict with cacheproxy's own (uv.lock), so each gets a
# venv of its own (tests/clients/venvs.py); bump a client in its .in file.
set -euo pipefail
cd "$(dirname "$0")"
UV=${UV:-../../../.tools/bin/uv}
for in in *.in; do
  "$UV" pip compile --quiet --generate-hashes --python-version 3.11 \
    --custom-compile-command "tests/clients/requirements/compile.sh" "$in" -o "${in%.in}.txt"
done
