#!/usr/bin/env bash
# Explainer warm start (LoRA + bridge SFT) for every dataset that has processed data.
#   bash code/explainer/run_lora_init.sh [--int8|--4bit] [--force] [any init_lora.py flag, e.g. --config FILE]
# Works from any folder. Python: $RECRL_VENV/bin/python, else .venv/bin/python, else python3 (no conda).
# A dataset without a ranker checkpoint is an error unless --no_bridge is given.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -n "${RECRL_VENV:-}" ]; then PY="$RECRL_VENV/bin/python"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"; fi
DATA_ROOT="${RECRL_ROOT:-$ROOT}"
found=0
for d in ml100k ml25m steam books; do
  if [ -f "$DATA_ROOT/data/proc/$d/manifest.json" ]; then
    found=1
    echo "[lora_init] dataset $d"
    "$PY" "$ROOT/code/explainer/init_lora.py" --dataset "$d" "$@"
  fi
done
if [ "$found" = 0 ]; then
  echo "run_lora_init.sh: no processed dataset under $DATA_ROOT/data/proc/ (expected data/proc/<D>/manifest.json);" \
       "run bash code/dataset/run_preprocessing.sh first" >&2
  exit 2
fi
