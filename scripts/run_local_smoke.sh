#!/usr/bin/env bash
# The smoke pipeline on MovieLens-100K with the offline assets (DESIGN.md §2, §7).
#   bash scripts/run_local_smoke.sh [--force] [--dataset ml100k] [--model NAME] [--profile smoke|ci] [--skip_setup]
# Sets up (or reuses) the virtual environment, then runs every stage: preprocess, SASRec, basis, warm start,
# Shielded PPO and its no-projection and frozen ablations, evaluation of each run, safety audits and the
# aggregation; each stage is skipped when its manifest says it is complete for the same config and inputs
# (--force redoes them). --profile ci uses experiments/smoke_ci/ (a few steps and users: the CI test);
# --model overrides the warm start's base model (e.g. a hub id, for users with internet). Each stage's
# output goes to logs/smoke/<stage>.log; a failure names the stage and its log. Wall time per stage is
# printed. RECRL_ROOT moves data, checkpoints and logs elsewhere (the code stays here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORCE=()
DATASET=ml100k
PROFILE=smoke
MODEL=()
SETUP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=(--force); shift ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --model) MODEL=(--model "$2"); shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --skip_setup) SETUP=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run_local_smoke.sh: unknown option '$1' (expected --force, --dataset D, --model NAME, --profile smoke|ci, --skip_setup)" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  smoke) ;;
  ci) CFG_DIR="$ROOT/experiments/smoke_ci" ;;
  *) echo "run_local_smoke.sh: --profile must be smoke or ci, found '$PROFILE'" >&2; exit 2 ;;
esac
cfg() {  # cfg STAGE → --config <experiments/smoke_ci/STAGE.yaml> under the ci profile, nothing otherwise
  if [ "$PROFILE" = ci ]; then echo "--config"; echo "$CFG_DIR/$1.yaml"; fi
}

[ "$SETUP" = 1 ] && bash "$ROOT/scripts/setup.sh"
PY="${RECRL_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
OUT="${RECRL_ROOT:-$ROOT}"
LOGDIR="$OUT/logs/smoke"
mkdir -p "$LOGDIR"
TIMES="$LOGDIR/stage_times.tsv"
: > "$TIMES"

run_stage() {  # run_stage NAME CMD...
  local name="$1"; shift
  local log="$LOGDIR/$name.log" t0 t1
  echo "[smoke] stage '$name': $*"
  t0=$EPOCHREALTIME
  if ! "$@" >"$log" 2>&1; then
    echo "[smoke] stage '$name' FAILED; its log: $log" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  t1=$EPOCHREALTIME
  awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s\t%.1f\n", n, b - a}' | tee -a "$TIMES" \
    | awk -F'\t' '{printf "[smoke]   done in %ss\n", $2}'
}

mapfile -t C_RANKER < <(cfg sasrec)
mapfile -t C_EXPL < <(cfg explainer)
mapfile -t C_PPO < <(cfg recrl)
mapfile -t C_EVAL < <(cfg eval)
# the smoke profile evaluates 16 users (plumbing, not a measurement; the shipped eval.yaml says 256), each
# system's 32 explanations in one generation batch (generation is ~80% of an evaluation and scales with the
# explanations; eval.yaml keeps batches of 16 so the README's tables reproduce), and stops the ranker 5
# evaluations after its best epoch instead of 15 (experiments/sasrec.yaml): on ML-100K, seed 0, the best
# epoch (27) and so the weights are the same, ~10 epochs sooner
if [ "$PROFILE" = smoke ]; then
  C_EVAL=(--n_users 16 --batch_size 32)
  C_RANKER=(--patience 5)
fi
TAGS=(shielded no_projection frozen)

run_stage download "$PY" code/dataset/download.py --dataset "$DATASET"
run_stage preprocess "$PY" code/dataset/make_splits.py --dataset "$DATASET" "${FORCE[@]}"
run_stage ranker "$PY" code/ranker/train_sasrec.py --dataset "$DATASET" "${C_RANKER[@]}" "${FORCE[@]}"
run_stage basis "$PY" code/projection/run_basis.py --dataset "$DATASET" --proj_dir "$OUT" "${FORCE[@]}"
run_stage lora_init "$PY" code/explainer/init_lora.py --dataset "$DATASET" "${C_EXPL[@]}" "${MODEL[@]}" "${FORCE[@]}"

# Shielded PPO and its ablations (smoke config: experiments/recrl_default.yaml). Without --force a
# finished run is resumed from its latest checkpoint, which has nothing left to do.
RESUME=(--resume auto)
[ ${#FORCE[@]} -gt 0 ] && RESUME=()
PPO=("$PY" code/trainer/run_recrl_cli.py --dataset "$DATASET" --ranker_ckpt "checkpoints/sasrec_$DATASET.pt" "${C_PPO[@]}")
run_stage ppo_shielded "${PPO[@]}" --projection_basis "checkpoints/basis_$DATASET.pt" --tag shielded "${RESUME[@]}"
run_stage ppo_no_projection "${PPO[@]}" --no_projection --tag no_projection "${RESUME[@]}"
run_stage ppo_frozen "${PPO[@]}" --freeze_store --tag frozen "${RESUME[@]}"

# Evaluation of every run (the baselines' explanations are generated once and shared), the safety audit
# (the main run's report goes to docs/, the ablations' next to their logs; --no_fail: the smoke run reports
# a failed check, it does not stop on it), then the aggregation of the three runs.
for tag in "${TAGS[@]}"; do
  run_stage "eval_$tag" "$PY" code/eval/evaluate_run.py --dataset "$DATASET" --tag "$tag" "${C_EVAL[@]}" "${FORCE[@]}"
done
run_stage audit_shielded "$PY" code/audit/run_audit.py --model_ckpt "checkpoints/recrl/$DATASET/shielded/latest" \
  --dataset "$DATASET" --no_fail
for tag in no_projection frozen; do
  run_stage "audit_$tag" "$PY" code/audit/run_audit.py --model_ckpt "checkpoints/recrl/$DATASET/$tag/latest" \
    --dataset "$DATASET" --no_fail --out_dir "logs/$DATASET/$tag"
done
run_stage aggregate "$PY" code/eval/aggregate_main.py --runs_dir logs --out_csv experiments/aggregate_results.csv \
  --out_dir experiments/figs --datasets "$DATASET" --tags "${TAGS[@]}"

"$PY" -m shielded_recrl.eval.smoke_table --dataset "$DATASET" --times "$TIMES"
echo
echo "[smoke] outputs: checkpoints/ (ranker, basis, warm start, PPO runs), logs/$DATASET/<run>/ (metrics.jsonl,"
echo "        eval.json, explanations.jsonl, audit.json), docs/safety_report_$DATASET.{json,md,pdf},"
echo "        experiments/aggregate_results.csv and experiments/figs/ (under $OUT)"
