"""SASRec training on real ML-100K (short runs): it learns, resume is exact, the entry script's outputs.

Uses the session fixture ``ml100k_processed`` (tests/conftest.py): data built in a temporary root, so
nothing is written to the real data/, checkpoints/ or logs/.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shielded_recrl.common import paths
from shielded_recrl.common.configs import load_yaml, merge_yaml
from shielded_recrl.ranker import baselines
from shielded_recrl.ranker.checkpoint import load_ranker
from shielded_recrl.ranker.data import eval_inputs
from shielded_recrl.ranker.evaluate import evaluate, evaluate_scorer, topk_items
from shielded_recrl.ranker.training import SASRecTrainConfig, train_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    # one thread: on a loaded 2-core machine two OpenMP threads per process thrash (5-10x slower)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _subset(data, n_users: int):
    """The first ``n_users`` users of a Processed (all items kept): a tiny real dataset."""
    keep = data.interactions["user_id"] <= n_users
    return dataclasses.replace(data, interactions=data.interactions[keep], users=data.users.iloc[:n_users])


@pytest.mark.slow
def test_short_training_beats_popularity_on_validation(ml100k_processed):
    data = ml100k_processed
    cfg = SASRecTrainConfig(hidden=32, max_len=50, epochs=3, batch_size=128, device="cpu")
    model, history = train_model(cfg, data)
    val = evaluate(model, data, "valid")["metrics"]["full_masked"]["ndcg@10"]
    pop = evaluate_scorer(baselines.popularity_scorer(data.sequences("train"), data.n_items),
                          eval_inputs(data, "valid", 50))["metrics"]["full_masked"]["ndcg@10"]
    rnd = evaluate_scorer(baselines.random_scorer(data.n_items), eval_inputs(data, "valid", 50))
    assert history[0]["train/loss"] > history[-1]["train/loss"]
    assert rnd["metrics"]["full_masked"]["ndcg@10"] < 0.02
    # uniform rank among 101 → E[NDCG@10] = Σ_{r<10} 1/log2(r+2) / 101 ≈ 0.045
    assert 0.02 < rnd["metrics"]["sampled100"]["ndcg@10"] < 0.08
    print(f"val ndcg@10 sasrec {val:.4f} vs most-popular {pop:.4f}")
    assert val > 1.5 * pop, (val, pop)  # a wrong mask, causality leak or broken loss fails this
    top = topk_items(model, data, "valid", 10)
    seen = eval_inputs(data, "valid", 50).seen.mask(torch.arange(data.n_users))
    assert top.shape == (data.n_users, 10) and not seen.gather(1, top).any() and not (top == 0).any()


@pytest.mark.slow
def test_resume_after_kill_ends_with_identical_metrics(ml100k_processed, tmp_path):
    data = _subset(ml100k_processed, 120)
    cfg = SASRecTrainConfig(hidden=16, max_len=20, epochs=4, patience=2, batch_size=64, dropout=0.3,
                            device="cpu", seed=5)
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("charts/")} for r in h]  # noqa: E731
    full, hist_full = train_model(cfg, data)
    state = tmp_path / "resume.pt"
    train_model(cfg, data, resume_path=state, stop_after_epoch=2)  # "killed" after epoch 2
    assert torch.load(state, weights_only=True)["epoch"] == 2
    resumed, hist_resumed = train_model(cfg, data, resume_path=state)
    assert strip(hist_resumed) == strip(hist_full)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert evaluate(full, data, "test")["metrics"] == evaluate(resumed, data, "test")["metrics"]


@pytest.mark.slow
def test_entry_script_writes_checkpoint_manifest_and_metrics(ml100k_processed, monkeypatch, capsys):
    from shielded_recrl.ranker import train_sasrec

    root = ml100k_processed.folder.parents[2]
    monkeypatch.setenv(paths.ROOT_ENV, str(root))
    metrics = train_sasrec.main(["--dataset", "ml100k", "--epochs", "1", "--hidden", "16", "--max_len", "20",
                                 "--threads", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "most_popular" in out and "sampled100" in out and "full_unmasked" in out
    ckpt = root / "checkpoints" / "sasrec_ml100k.pt"
    man = json.loads((root / "checkpoints" / "sasrec_ml100k.manifest.json").read_text())
    assert man["stage"] == "ranker" and man["id_map_sha256"] == ml100k_processed.id_map_sha256
    assert man["outputs"]["checkpoint"]["sha256"] and not (root / "checkpoints" / "sasrec_ml100k.resume.pt").exists()
    model, raw = load_ranker(ckpt, expect_id_map=ml100k_processed.id_map_sha256)
    assert raw["metrics"]["test/sasrec/full_masked/ndcg@10"] == metrics["test/sasrec/full_masked/ndcg@10"]
    rows = [json.loads(line) for line in (root / "logs" / "ml100k" / "ranker" / "metrics.jsonl").open()]
    assert rows[0]["epoch"] == 1 and "valid/full_masked/ndcg@10" in rows[0]


def test_shipped_yaml_matches_config_for_every_dataset():
    path = REPO / "experiments" / "sasrec.yaml"
    data = load_yaml(path)
    for ds in ("ml100k", "ml25m", "steam", "books"):
        assert ds in data["per_dataset"]
        merge_yaml(SASRecTrainConfig, SASRecTrainConfig(dataset=ds), dict(data), path, ds)


@pytest.mark.parametrize("how", ["script_in_folder", "module"])
def test_entry_point_invocations(how):
    if how == "module":
        cmd, cwd = [sys.executable, "-m", "shielded_recrl.ranker.train_sasrec", "--help"], REPO
    else:
        cmd, cwd = [sys.executable, "train_sasrec.py", "--help"], REPO / "code" / "ranker"
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--dataset" in res.stdout and "--loss" in res.stdout
