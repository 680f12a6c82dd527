#!/usr/bin/env bash
# Train SASRec on every dataset whose processed data exists (data/proc/<D>/manifest.json).
# Works from any folder; needs no conda: uses $RECRL_PYTHON, else the repo's .venv, else python3.
# Extra arguments go to every train_sasrec.py call (e.g. --epochs 5).
set -euo pipefail
ROOT="${RECRL_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
PY="${RECRL_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/train_sasrec.py"
found=0
for D in ml100k books ml25m steam; do
  if [[ -f "$ROOT/data/proc/$D/manifest.json" ]]; then
    found=1
    echo "[run_training] $D"
    "$PY" "$SCRIPT" --dataset "$D" "$@"
  else
    echo "[run_training] skip $D: no $ROOT/data/proc/$D/manifest.json (run code/dataset/run_preprocessing.sh)"
  fi
done
if [[ $found -eq 0 ]]; then
  echo "[run_training] no processed dataset found under $ROOT/data/proc/" >&2
  exit 1
fi
