#!/usr/bin/env bash
# Preprocess every dataset whose raw files are in data/raw/<D>/ (the seed's run_preprocessing.sh;
# no conda). Extra arguments (e.g. --force, --k_core 10) go to make_splits.py for each dataset.
#   bash code/dataset/run_preprocessing.sh [--force]
# Get raw files first: python code/dataset/download.py --dataset all   (ml100k also works offline)
# Environment: RECRL_VENV (default <repo>/.venv) or PYTHON picks the interpreter; RECRL_ROOT moves
# the data root (as in code/common/paths.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RECRL_VENV:-$ROOT/.venv}"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"
else PY="python3"; fi
DATA_ROOT="${RECRL_ROOT:-$ROOT}"

# The files each loader needs (any one alternative per dataset), as in code/dataset/fetch.py.
has_raw() {
  local raw="$DATA_ROOT/data/raw/$1"
  case "$1" in
    ml100k) [ -f "$raw/ml-100k/u.data" ] || [ -f "$raw/ml-100k.inter" ] ;;
    ml25m)  [ -f "$raw/ml-25m/ratings.csv" ] || [ -f "$raw/ratings.csv" ] ;;
    steam)  [ -f "$raw/steam-200k.csv" ] ;;
    books)  [ -f "$raw/Books_5.json.gz" ] && [ -f "$raw/meta_Books.json.gz" ] ;;
  esac
}

done_any=0
for ds in ml100k ml25m steam books; do
  if has_raw "$ds"; then
    echo "[preprocess] $ds"
    "$PY" "$ROOT/code/dataset/make_splits.py" --dataset "$ds" "$@"
    done_any=1
  else
    echo "[preprocess] $ds: no raw files in $DATA_ROOT/data/raw/$ds (python code/dataset/download.py --dataset $ds); skipped"
  fi
done
if [ "$done_any" = 0 ]; then
  echo "[preprocess] nothing to do: no dataset has raw files; run code/dataset/download.py first" >&2
  exit 1
fi
