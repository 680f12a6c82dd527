#!/usr/bin/env bash
# The smoke pipeline on MovieLens-100K with the offline assets (DESIGN.md §2, §7).
#   bash scripts/run_local_smoke.sh [--force] [--dataset ml100k] [--model NAME] [--profile smoke|ci] [--jobs 1|2] [--skip_setup]
# Sets up (or reuses) the virtual environment, then runs every stage: preprocess, SASRec, basis, warm start,
# Shielded PPO and its no-projection and frozen ablations, evaluation of each run, safety audits and the
# aggregation; each stage is skipped when its manifest says it is complete for the same config and inputs
# (--force redoes them). --profile ci uses experiments/smoke_ci/ (a few steps and users: the CI test);
# --model overrides the warm start's base model (e.g. a hub id, for users with internet). --jobs 2 (the
# default on ≥ 2 cores) runs the three PPO runs, their evaluations and audits in two lanes at once, each
# stage on half the cores (OMP_NUM_THREADS, unless set); --jobs 1 runs every stage in turn. Each stage's
# output goes to logs/smoke/<stage>.log; a failure names the stage and its log. Wall time per stage and in
# all is printed. RECRL_ROOT moves data, checkpoints and logs elsewhere (the code stays here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORCE=()
DATASET=ml100k
PROFILE=smoke
MODEL=()
SETUP=1
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)  # nproc reads OMP_*
JOBS=$(( CORES >= 2 ? 2 : 1 ))
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=(--force); shift ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --model) MODEL=(--model "$2"); shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --jobs) JOBS="${2:-}"; shift 2 || shift ;;
    --skip_setup) SETUP=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run_local_smoke.sh: unknown option '$1' (expected --force, --dataset D, --model NAME, --profile smoke|ci, --jobs 1|2, --skip_setup)" >&2; exit 2 ;;
  esac
done
case "$JOBS" in
  1|2) ;;
  *) echo "run_local_smoke.sh: --jobs must be 1 or 2 (stages run at once), found '$JOBS'" >&2; exit 2 ;;
esac
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
T_START=$EPOCHREALTIME

DONE="$LOGDIR/.done"  # lanes (--jobs 2): a file per finished stage, and 'FAILED' when one failed
rm -rf "$DONE"
mkdir -p "$DONE"

run_stage() {  # run_stage NAME CMD... ; exits (the script, or its lane) when the command fails
  local name="$1"; shift
  local log="$LOGDIR/$name.log" t0 t1
  [ -e "$DONE/FAILED" ] && exit 1  # another lane failed: start nothing new
  echo "[smoke] stage '$name': $*"
  t0=$EPOCHREALTIME
  if ! "$@" >"$log" 2>&1; then
    echo "[smoke] stage '$name' FAILED; its log: $log" >&2
    tail -n 20 "$log" >&2
    echo "$name" >> "$DONE/FAILED"
    exit 1
  fi
  t1=$EPOCHREALTIME
  awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s\t%.1f\n", n, b - a}' | tee -a "$TIMES" \
    | awk -F'\t' '{printf "[smoke]   %s done in %ss\n", $1, $2}'
  : > "$DONE/$name"
}

await() {  # await STAGE... : wait (in a lane) until each STAGE is done; exit if any stage failed
  local name
  for name in "$@"; do
    until [ -e "$DONE/$name" ]; do
      [ -e "$DONE/FAILED" ] && exit 1
      sleep 0.5
    done
  done
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
ppo() {  # ppo TAG : the PPO run of one mode
  local mode=()
  case "$1" in
    shielded) mode=(--projection_basis "checkpoints/basis_$DATASET.pt") ;;
    no_projection) mode=(--no_projection) ;;
    frozen) mode=(--freeze_store) ;;
  esac
  run_stage "ppo_$1" "${PPO[@]}" "${mode[@]}" --tag "$1" "${RESUME[@]}"
}
# Evaluation of every run (the baselines' explanations are generated by the first, eval_shielded, and shared)
# and the safety audit (the main run's report goes to docs/, the ablations' next to their logs; --no_fail:
# the smoke run reports a failed check, it does not stop on it).
evaluate() { run_stage "eval_$1" "$PY" code/eval/evaluate_run.py --dataset "$DATASET" --tag "$1" "${C_EVAL[@]}" "${FORCE[@]}"; }
audit() {
  local out=()
  [ "$1" != shielded ] && out=(--out_dir "logs/$DATASET/$1")
  run_stage "audit_$1" "$PY" code/audit/run_audit.py --model_ckpt "checkpoints/recrl/$DATASET/$1/latest" \
    --dataset "$DATASET" --no_fail "${out[@]}"
}

if [ "$JOBS" = 1 ]; then
  for tag in "${TAGS[@]}"; do ppo "$tag"; done
  for tag in "${TAGS[@]}"; do evaluate "$tag"; done
  for tag in "${TAGS[@]}"; do audit "$tag"; done
else
  # Two lanes, balanced on the stages' measured times (README, "Wall time"): eval_shielded generates the
  # baselines' texts (~2× another evaluation), so the other evaluations wait for it rather than generate
  # them again; each lane's stages get half the cores.
  [ -z "${OMP_NUM_THREADS:-}" ] && export OMP_NUM_THREADS=$(( CORES / 2 > 0 ? CORES / 2 : 1 ))
  ( ppo shielded; evaluate shielded; audit shielded; await ppo_frozen; evaluate frozen; audit frozen ) &
  lane1=$!
  ( ppo no_projection; ppo frozen; await eval_shielded; evaluate no_projection; audit no_projection ) &
  lane2=$!
  rc=0
  wait "$lane1" || rc=1
  wait "$lane2" || rc=1
  if [ "$rc" != 0 ] || [ -e "$DONE/FAILED" ]; then
    echo "[smoke] FAILED stage(s): $(tr '\n' ' ' < "$DONE/FAILED" 2>/dev/null)" >&2
    exit 1
  fi
fi
run_stage aggregate "$PY" code/eval/aggregate_main.py --runs_dir logs --out_csv experiments/aggregate_results.csv \
  --out_dir experiments/figs --datasets "$DATASET" --tags "${TAGS[@]}"

WALL=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
"$PY" -m shielded_recrl.eval.smoke_table --dataset "$DATASET" --times "$TIMES" --wall_s "$WALL" --jobs "$JOBS"
echo
echo "[smoke] outputs: checkpoints/ (ranker, basis, warm start, PPO runs), logs/$DATASET/<run>/ (metrics.jsonl,"
echo "        eval.json, explanations.jsonl, audit.json), docs/safety_report_$DATASET.{json,md,pdf},"
echo "        experiments/aggregate_results.csv and experiments/figs/ (under $OUT)"
