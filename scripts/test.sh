#!/usr/bin/env bash
# Run every check: ruff (lint + format), mypy, then the whole pytest suite.
# Needs: scripts/install.sh --cpu --services --containers (etcd and nats-server on PATH; the tests start
# their own servers on free ports). Extra arguments go to pytest (e.g. scripts/test.sh -k frontend).
#   scripts/test.sh --chaos   only the slow fault scenarios (tests marked chaos_slow; not in CI: run
#                             them before resolving a reliability change and commit their output)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}
PY=${PY:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"

echo "== ruff"
"$PY" -m ruff check dynamo tests benchmarks
"$PY" -m ruff format --check dynamo tests benchmarks
echo "== mypy"
"$PY" -m mypy
if [ "${1:-}" = "--chaos" ]; then
  shift
  echo "== pytest (chaos_slow)"
  exec "$PY" -m pytest -p no:cacheprovider -ra --durations=15 -m chaos_slow tests/chaos "$@"
fi
echo "== pytest"
"$PY" -m pytest -p no:cacheprovider -ra --durations=15 -m "not chaos_slow" "$@"
