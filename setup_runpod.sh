#!/usr/bin/env bash
# Environment for a GPU machine (a RunPod pod or any Linux box with an NVIDIA GPU), then a GPU check.
#   bash setup_runpod.sh [--allow_cpu] [--skip_lora]
# A thin wrapper around scripts/setup.sh (read it for what is installed): conda is not required.
#   - venv: RECRL_VENV if set; else the active conda env when one other than `base` is active (installed
#     into directly, so a CUDA torch already in it is kept); else <repo>/.venv.
#   - torch: TORCH_SPEC (default torch==2.13.0: on Linux x86_64 PyPI's build is a CUDA build). For another
#     CUDA version, point pip at the PyTorch index for it, e.g.
#       PIP_EXTRA_INDEX_URL=<PyTorch index for your CUDA> TORCH_SPEC="torch==2.13.0" bash setup_runpod.sh
#     setup.sh keeps a torch the venv already has (see README "Install").
#   - full-run extra: the kaggle CLI, only when a Kaggle token is present (Steam-200K download).
# Then scripts/gpu_test.py (its flags pass through): exits non-zero when no usable CUDA GPU is found,
# unless --allow_cpu. Nothing here pushes to git or needs an account.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in -h|--help) sed -n '2,13p' "$0"; exit 0 ;; esac

if [ -z "${RECRL_VENV:-}" ] && [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != base ]; then
  export RECRL_VENV="$CONDA_PREFIX"
  echo "[setup_runpod] using the active conda env '$CONDA_DEFAULT_ENV' ($CONDA_PREFIX)"
fi
VENV="${RECRL_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"
PY="$VENV/bin/python"

kaggle_token() {  # a Kaggle API token in the file or the variables the kaggle CLI reads
  [ -f "${KAGGLE_CONFIG_DIR:-$HOME/.kaggle}/kaggle.json" ] && return 0
  [ -n "${KAGGLE_USERNAME:-}" ] && [ -n "${KAGGLE_KEY:-}" ]
}
if kaggle_token; then
  if [ ! -x "$VENV/bin/kaggle" ] && ! command -v kaggle >/dev/null 2>&1; then
    echo "[setup_runpod] Kaggle token found: installing the kaggle CLI (Steam-200K download)"
    "$PY" -m pip install --quiet kaggle
  fi
fi

"$PY" "$ROOT/scripts/gpu_test.py" "$@"
