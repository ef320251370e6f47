#!/usr/bin/env bash
# Refresh the lock to the newest versions pyproject.toml's ranges allow (and
# uv to its newest release), then run the whole test command against them.
# Run it on purpose: monthly, for a security release of a dependency, or
# after changing a range in pyproject.toml; commit uv.lock and
# scripts/uv-requirements.txt only when the tests pass.  See README,
# "Dependencies".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh  # the current uv, from its pin

# uv's own pin, every wheel's hash (any platform a site may run setup.sh on).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo uv > "$tmp/uv.in"
.tools/bin/uv pip compile "$tmp/uv.in" --upgrade --generate-hashes --universal \
  --no-header --no-annotate --quiet -o "$tmp/uv.txt"
{
  sed -n '1,3p' scripts/uv-requirements.txt  # the file's own comment
  cat "$tmp/uv.txt"
} > "$tmp/uv-requirements.txt"
mv "$tmp/uv-requirements.txt" scripts/uv-requirements.txt

.tools/bin/uv lock --upgrade
git --no-pager diff --stat -- uv.lock scripts/uv-requirements.txt || true
exec scripts/test.sh "$@"
