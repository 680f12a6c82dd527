#!/usr/bin/env bash
# The full experiment on a GPU machine (DESIGN.md §2): every dataset, TinyLlama-1.1B-Chat in 8-bit, the
# main Shielded PPO run and its ablations, evaluation and an audit per run, then the aggregate table.
#   bash scripts/run_runpod_full.sh [--datasets "ml100k books"] [--model HUB_ID] [--max_steps N]
#        [--taus "0.95 0.99 0.999"] [--gpus N [--ddp]] [--max_users N] [--eval_users N] [--ppo_config FILE]
#        [--force] [--allow_cpu] [--skip_setup] [--dry_run]
# Per dataset: download (skipped when the raw files are there) → preprocess → SASRec → bases → warm start
# (experiments/explainer_full.yaml) → PPO runs shielded, no_projection, kl0, frozen, tau<τ> → eval + audit
# per run; then aggregation over logs/. Steam-200K needs Kaggle credentials: without them (and without
# data/raw/steam/steam-200k.csv) steam is skipped with a message, and the other datasets still run.
# Safe to re-run: each stage skips work its manifest says is complete; PPO resumes from its latest
# checkpoint (--resume auto). Logs: logs/full/<D>/<stage>.log; wall times: logs/full/stage_times.tsv.
# Options:
#   --datasets LIST   datasets in order (default "ml100k ml25m steam books")
#   --model ID        warm start's base model (default TinyLlama/TinyLlama-1.1B-Chat-v1.0; needs the hub)
#   --max_steps N     PPO iterations per run (default 20000, the seed's)
#   --taus LIST       τ sweep: one basis and one shielded run per value (default "0.95 0.99 0.999")
#   --gpus N          use N GPUs (default: CUDA_VISIBLE_DEVICES, else all that nvidia-smi -L lists); without
#                     --ddp the independent PPO runs go one per GPU, concurrently
#   --ddp             with N > 1 GPUs: the ranker and each PPO run use all N GPUs as one data-parallel run
#                     (accelerate launch --multi_gpu --num_processes N, DDP over NCCL), one run after another;
#                     the PPO config's ppo_batch must be a multiple of N x group_size (checked by the trainer)
#   --max_users N     make_splits.py --max_users N: a seeded sample of N users per dataset (default: all).
#                     The PPO stage holds dense users × items score matrices: ML-25M takes tens of GB, and
#                     full Amazon Books does not fit, so a Books run needs a sample
#   --eval_users N    evaluate_run.py --n_users N (default: experiments/eval.yaml's per-dataset value)
#   --ppo_config FILE PPO YAML under the flags above (default: experiments/recrl_full.yaml)
#   --force           redo every stage; PPO starts fresh instead of resuming
#   --allow_cpu       let setup's gpu_test.py accept a machine without a CUDA GPU
#   --skip_setup      do not run setup_runpod.sh (the environment is ready, e.g. the Docker image)
#   --dry_run         print the commands, run nothing
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATASETS="ml100k ml25m steam books"
MODEL="TinyLlama/TinyLlama-1.1B-Chat-v1.0"
MAX_STEPS=20000        # the seed's full-run value
TAUS="0.95 0.99 0.999"
N_GPUS=""
EVAL_USERS=()
MAX_USERS=()
PPO_CONFIG=(--config experiments/recrl_full.yaml)
FORCE=()
ALLOW_CPU=()
SETUP=1
DRY=0
DDP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --datasets) DATASETS="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --max_steps) MAX_STEPS="$2"; shift 2 ;;
    --taus) TAUS="$2"; shift 2 ;;
    --gpus) N_GPUS="$2"; shift 2 ;;
    --ddp) DDP=1; shift ;;
    --eval_users) EVAL_USERS=(--n_users "$2"); shift 2 ;;
    --max_users) MAX_USERS=(--max_users "$2"); shift 2 ;;
    --ppo_config) PPO_CONFIG=(--config "$2"); shift 2 ;;
    --force) FORCE=(--force); shift ;;
    --allow_cpu) ALLOW_CPU=(--allow_cpu); shift ;;
    --skip_setup) SETUP=0; shift ;;
    --dry_run) DRY=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "run_runpod_full.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# The same venv choice as setup_runpod.sh: RECRL_VENV, else an active non-base conda env, else .venv.
if [ -z "${RECRL_VENV:-}" ] && [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != base ]; then
  export RECRL_VENV="$CONDA_PREFIX"
fi
VENV="${RECRL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
DATA_ROOT="${RECRL_ROOT:-$ROOT}"   # where the stages read and write (code/common/paths.py)
LOGDIR="$DATA_ROOT/logs/full"
TIMES="$LOGDIR/stage_times.tsv"
FAILED="$LOGDIR/failed.txt"

# GPUs: the ids in CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists; --gpus N keeps N of them.
GPU_IDS=()
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a GPU_IDS <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1; then
  n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  for ((g = 0; g < n; g++)); do GPU_IDS+=("$g"); done
fi
if [ -n "$N_GPUS" ]; then
  for ((g = ${#GPU_IDS[@]}; g < N_GPUS; g++)); do GPU_IDS+=("$g"); done
  GPU_IDS=("${GPU_IDS[@]:0:$N_GPUS}")
fi

# --ddp: the data-parallel stages (ranker, PPO) start through accelerate's launcher on every GPU at once
# (code/common/distributed.py); the other stages, and every stage without --ddp, run as one process.
LAUNCH=("$PY")
if [ "$DDP" = 1 ] && [ ${#GPU_IDS[@]} -gt 1 ]; then
  LAUNCH=("$VENV/bin/accelerate" launch --multi_gpu --num_processes "${#GPU_IDS[@]}" --num_machines 1
          --gpu_ids "$(IFS=,; echo "${GPU_IDS[*]}")" --mixed_precision no --dynamo_backend no)
elif [ "$DDP" = 1 ]; then
  echo "[full] --ddp with ${#GPU_IDS[@]} GPU(s): nothing to parallelise; every stage runs as one process"
fi

if [ "$DRY" = 1 ]; then
  echo "[full] dry run: commands only; GPUs used: ${#GPU_IDS[@]} (${GPU_IDS[*]:-none})"
  if [ "$SETUP" = 1 ]; then echo "[full] setup: bash setup_runpod.sh ${ALLOW_CPU[*]}"
  else echo "[full] setup skipped"; fi
else
  if [ "$SETUP" = 1 ]; then bash "$ROOT/setup_runpod.sh" "${ALLOW_CPU[@]}"; fi
  export PATH="$VENV/bin:$PATH"  # the kaggle CLI (Steam) is found on PATH by download.py
  mkdir -p "$LOGDIR"
  : > "$TIMES"
  : > "$FAILED"
fi
cd "$ROOT"

run_stage() {  # run_stage DATASET NAME CMD... ; returns the command's status (never exits the script)
  local ds="$1" name="$2"; shift 2
  local prefix=""
  [ -n "${LANE_GPU:-}" ] && prefix="CUDA_VISIBLE_DEVICES=$LANE_GPU "
  if [ "$DRY" = 1 ]; then
    echo "[full] $ds/$name: $prefix$(printf '%q ' "$@")"
    return 0
  fi
  local log="$LOGDIR/$ds/$name.log" t0 t1
  mkdir -p "$LOGDIR/$ds"
  echo "[full] $ds/$name: $prefix$*"
  t0=$EPOCHREALTIME
  if ! "$@" >"$log" 2>&1; then
    echo "[full] $ds/$name FAILED; its log: $log" >&2
    tail -n 20 "$log" >&2
    echo "$ds/$name" >> "$FAILED"
    return 1
  fi
  t1=$EPOCHREALTIME
  awk -v n="$ds/$name" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s\t%.1f\n", n, b - a}' >> "$TIMES"
  awk -v n="$ds/$name" -v a="$t0" -v b="$t1" 'BEGIN {printf "[full]   %s done in %.1fs\n", n, b - a}'
}

steam_reachable() {  # the raw file is there, or a Kaggle token is
  [ -f "$DATA_ROOT/data/raw/steam/steam-200k.csv" ] && return 0
  [ -f "${KAGGLE_CONFIG_DIR:-$HOME/.kaggle}/kaggle.json" ] && return 0
  [ -n "${KAGGLE_USERNAME:-}" ] && [ -n "${KAGGLE_KEY:-}" ]
}

# The PPO command line of the seed's full run, plus int8 and bookkeeping for long runs.
RESUME=(--resume auto)
[ ${#FORCE[@]} -gt 0 ] && RESUME=()
SEED_FLAGS=(--lora_rank 16 --kl_beta 0.05 --micro_batch_size 4 --grad_accum 2 --max_seq_len_explainer 384
            --explanation_max_len 160 --max_steps "$MAX_STEPS")
LONG_RUN=(--int8 --max_new_tokens 64   # 64: the warm start's budget (experiments/explainer_full.yaml)
          --save_every 500             # a killed run resumes (--resume auto) from at most 500 steps back
          --monitor_every 50)          # the drift guard's full validation ranking, not every step

ppo_chain() {  # ppo_chain D TAG MODE_ARGS... : PPO run, then its evaluation and audit. MODE_ARGS come
  # after the shared flags, so that a run's own value wins (argparse keeps the last: kl0's --kl_beta 0.0).
  local ds="$1" tag="$2"; shift 2
  run_stage "$ds" "ppo_$tag" "${LAUNCH[@]}" code/trainer/run_recrl_cli.py --dataset "$ds" \
    --ranker_ckpt "checkpoints/sasrec_$ds.pt" "${SEED_FLAGS[@]}" "${LONG_RUN[@]}" "$@" --tag "$tag" \
    "${PPO_CONFIG[@]}" "${RESUME[@]}" || return 0  # a failed run is listed at the end; its lane goes on
  run_stage "$ds" "eval_$tag" "$PY" code/eval/evaluate_run.py --dataset "$ds" --tag "$tag" "${EVAL_USERS[@]}" \
    || return 0
  # --no_fail: a policy violation is a finding recorded in the report, not a reason to stop the run.
  # The main run's report goes to docs/safety_report_<D>.*; the others' next to their run (one file name
  # per dataset would otherwise be overwritten by each run). Every run also gets logs/<D>/<tag>/audit.json.
  local out=()
  [ "$tag" != shielded ] && out=(--out_dir "logs/$ds/$tag")
  run_stage "$ds" "audit_$tag" "$PY" code/audit/run_audit.py --model_ckpt "checkpoints/recrl/$ds/$tag/latest" \
    --dataset "$ds" --no_fail "${out[@]}" || return 0
}

dataset_pipeline() {  # the stages up to the warm start, then the PPO runs; stops at the first failure
  local ds="$1"
  run_stage "$ds" download "$PY" code/dataset/download.py --dataset "$ds" --no_progress || return 1
  run_stage "$ds" preprocess "$PY" code/dataset/make_splits.py --dataset "$ds" "${MAX_USERS[@]}" "${FORCE[@]}" \
    || return 1
  run_stage "$ds" ranker "${LAUNCH[@]}" code/ranker/train_sasrec.py --dataset "$ds" "${FORCE[@]}" || return 1
  run_stage "$ds" basis "$PY" code/projection/run_basis.py --dataset "$ds" --proj_dir . "${FORCE[@]}" || return 1
  local tau runs=()
  for tau in $TAUS; do
    run_stage "$ds" "basis_tau$tau" "$PY" code/projection/run_basis.py --dataset "$ds" --proj_dir . \
      --energy "$tau" --output "checkpoints/basis_${ds}_tau$tau.pt" "${FORCE[@]}" || return 1
  done
  run_stage "$ds" lora_init "$PY" code/explainer/init_lora.py --dataset "$ds" \
    --config experiments/explainer_full.yaml --model "$MODEL" --int8 "${FORCE[@]}" || return 1

  # One entry per PPO run: "TAG MODE_ARGS..." (no spaces inside an argument).
  runs=("shielded --projection_basis checkpoints/basis_$ds.pt"
        "no_projection --no_projection"
        "kl0 --projection_basis checkpoints/basis_$ds.pt --kl_beta 0.0"
        "frozen --freeze_store")
  for tau in $TAUS; do runs+=("tau$tau --projection_basis checkpoints/basis_${ds}_tau$tau.pt"); done

  # Multi-GPU, two ways. --ddp: each run in turn on all GPUs (LAUNCH above). Otherwise the independent
  # runs (different tags) go to N lanes, one per GPU (CUDA_VISIBLE_DEVICES), and run concurrently; each
  # lane runs its share in turn.
  local lanes=${#GPU_IDS[@]} i lane pids=() entry
  if [ "$lanes" -le 1 ] || [ "$DDP" = 1 ]; then
    for entry in "${runs[@]}"; do
      # shellcheck disable=SC2086  # the entry splits into TAG and MODE_ARGS on purpose
      ppo_chain "$ds" $entry
    done
    return 0
  fi
  for ((lane = 0; lane < lanes; lane++)); do
    (
      LANE_GPU="${GPU_IDS[$lane]}"
      export CUDA_VISIBLE_DEVICES="$LANE_GPU"
      for ((i = lane; i < ${#runs[@]}; i += lanes)); do
        # shellcheck disable=SC2086
        ppo_chain "$ds" ${runs[$i]}
      done
    ) &
    pids+=($!)
    [ "$DRY" = 1 ] && wait "${pids[-1]}"  # dry run: lanes printed one after another
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
}

skipped=()
for ds in $DATASETS; do
  if [ "$ds" = steam ] && ! steam_reachable; then
    echo "[full] steam: SKIPPED - no Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)" \
         "and no data/raw/steam/steam-200k.csv; see README 'Datasets'. The other datasets still run."
    skipped+=(steam)
    continue
  fi
  dataset_pipeline "$ds" || echo "[full] $ds: stopped at a failed stage (listed below); the other datasets go on" >&2
done

run_stage all aggregate "$PY" code/eval/aggregate_main.py --runs_dir logs --out_csv experiments/aggregate_results.csv \
  --out_dir experiments/figs || true

[ "$DRY" = 1 ] && exit 0
echo
echo "[full] wall times: $TIMES; logs: $LOGDIR/<dataset>/<stage>.log"
[ ${#skipped[@]} -gt 0 ] && echo "[full] skipped datasets: ${skipped[*]}"
if [ -s "$FAILED" ]; then
  echo "[full] FAILED stages (re-run this script after fixing them; completed stages are skipped):" >&2
  sed 's/^/  - /' "$FAILED" >&2
  exit 1
fi
echo "[full] all stages done: experiments/aggregate_results.csv, experiments/figs/, logs/<dataset>/<tag>/"
