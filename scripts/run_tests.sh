#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the test suite. Extra arguments go to pytest.
# The tests run on one pytest-xdist worker per core, at most 2 (RECRL_TEST_WORKERS=N overrides; 0: one
# process, no workers); a test file's tests stay on one worker (--dist loadfile: module fixtures built once).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORES="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
WORKERS="${RECRL_TEST_WORKERS:-$(( CORES < 2 ? CORES : 2 ))}"
case "$WORKERS" in
  ''|*[!0-9]*) echo "run_tests.sh: RECRL_TEST_WORKERS: expected a number of workers (0: none), found '$WORKERS'" >&2; exit 2 ;;
esac
if [ "$WORKERS" -le 1 ]; then WORKERS=0; fi  # one worker would only add a process
bash "$ROOT/scripts/setup.sh"
VENV="${RECRL_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -n "$WORKERS" --dist loadfile "$@"
