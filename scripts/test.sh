#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests and the integration tests
# (real stripe processes in network namespaces; those need root).
# Extra arguments go to pytest (e.g. -k core, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check stripe bench tests
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider -q -n 2 --dist worksteal --durations=15 "$@"
