"""The shield on a small trained SASRec (ML-100K, a few epochs via the ranker stage's ``train_model``):
the projection stage's entry script, and the protection claim of DESIGN.md §1 at the default τ and ρ.

The auxiliary objective here aligns item vectors, through a linear probe, with each item's multi-hot
genre vector: a real, content-derived target from the item table (the study uses the sentence encoder's
text embedding instead, ~20 s to load and encode, too slow for a unit test). What is tested is the
shield's ranking protection, which does not depend on which content target is used.
"""

from __future__ import annotations

import json

import pytest
import torch

from shielded_recrl.common import paths
from shielded_recrl.common.errors import InputError
from shielded_recrl.eval.ranking_drift import drift_report, reference_scores
from shielded_recrl.projection import artifacts
from shielded_recrl.projection.basis import compute_basis
from shielded_recrl.projection.coadapt import coadapt
from shielded_recrl.projection.run_basis import user_states
from shielded_recrl.projection.shield import ShieldConfig
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker, save_ranker
from shielded_recrl.ranker.training import SASRecTrainConfig, train_model

from conftest import intra_op_threads

STORE_LR = 1e-2  # the study's higher store learning rate: an unprojected store then drifts far in 200 steps
STEPS = 200


@pytest.fixture(scope="module")
def trained(ml100k_processed):
    torch.set_num_threads(intra_op_threads())
    cfg = SASRecTrainConfig(hidden=64, max_len=50, epochs=3, patience=10, batch_size=128, device="cpu", seed=0)
    model, _ = train_model(cfg, ml100k_processed)
    model.requires_grad_(False)
    return model, ml100k_processed


def genre_targets(data) -> torch.Tensor:
    genres = data.items.sort_values("item_id")["genres"].astype(str).str.split("|")
    vocab = sorted({g for gs in genres for g in gs if g})
    T = torch.zeros(len(genres), len(vocab))
    for i, gs in enumerate(genres):
        for g in gs:
            if g:
                T[i, vocab.index(g)] = 1.0
    return T


@pytest.mark.slow
def test_run_basis_writes_checked_basis_and_manifest(trained, monkeypatch, capsys):
    from shielded_recrl.projection import run_basis

    model, data = trained
    root = data.folder.parents[2]
    monkeypatch.setenv(paths.ROOT_ENV, str(root))
    ckpt = root / "checkpoints" / "sasrec_ml100k.pt"
    save_ranker(ckpt, model, {"id_map_sha256": data.id_map_sha256})
    metrics = run_basis.main(["--dataset", "ml100k", "--proj_dir", str(root), "--energy", "0.95",
                              "--max_users", "500"])
    out = capsys.readouterr().out
    assert "rank at energy 0.9:" in out and "0.999:" in out
    path = root / "checkpoints" / "basis_ml100k.pt"
    sha = checkpoint_sha256(ckpt)
    basis = artifacts.load_basis(path, d=64, ranker_sha256=sha)  # weights_only, checks pass
    Q = basis["Q"]
    assert Q.shape == (64, basis["rank"]) and basis["rank"] == metrics["rank"] == metrics["rank@0.95"]
    assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[1]), atol=1e-5)
    assert basis["n_users"] == 500 and basis["n_items"] == data.n_items and basis["recipe"] == "both"
    man = json.loads(artifacts.manifest_path(path).read_text())
    assert man["stage"] == "projection" and man["ranker_sha256"] == sha
    assert man["outputs"]["basis"]["sha256"] == checkpoint_sha256(path)
    with pytest.raises(InputError, match="sha256"):
        artifacts.load_basis(path, d=64, ranker_sha256="0" * 64)
    with pytest.raises(InputError, match="d = 32"):
        artifacts.load_basis(path, d=32, ranker_sha256=sha)
    assert path.resolve().is_relative_to(root.resolve())  # the temporary root, never the real checkpoints/
    assert load_ranker(ckpt)[0].cfg.hidden == 64


@pytest.mark.slow
def test_shield_protects_ranking_while_the_store_learns(trained):
    model, data = trained
    E0 = model.item_table.detach().clone()
    H = user_states(model, data.sequences("train"), None, 1024, 0, torch.device("cpu"))
    default = ShieldConfig()
    Q = compute_basis(H, E0[1:], default.energy)["Q"]
    T = genre_targets(data)
    ref = reference_scores(model, data, "test")
    runs = {}
    for name, cfg, q in (("frozen", ShieldConfig(mode="frozen"), None),
                         ("shielded", default, Q),
                         ("no_projection", ShieldConfig(mode="no_projection", trust_radius=None), None)):
        res = coadapt(E0, T, cfg, q, steps=STEPS, store_lr=STORE_LR, seed=0)
        runs[name] = (res, drift_report(model, data, "test", res.E, reference=ref))
    frozen, shielded, free = (runs[n] for n in ("frozen", "shielded", "no_projection"))

    for name, (res, rep) in runs.items():
        print(f"{name}: aux {res.aux_final:.4f} (frozen {frozen[0].aux_final:.4f}), top-10 overlap "
              f"{float(rep.overlap.mean()):.3f}, NDCG@10 {rep.ndcg.mean_a:.4f} -> {rep.ndcg.mean_b:.4f} "
              f"({rep.ndcg.diff:+.4f} ± {rep.ndcg.se:.4f})")
    # the store learned something the probe alone could not: the test cannot pass by doing nothing
    assert shielded[0].aux_final < 0.97 * frozen[0].aux_final
    assert not torch.equal(shielded[0].E, E0)
    # the ranking stayed put
    rep = shielded[1]
    assert rep.overlap.mean() >= 0.9, rep.overlap.mean()
    assert abs(rep.ndcg.diff) <= 2 * rep.ndcg.se + 1e-12, rep.ndcg
    # while the unprotected store, for more auxiliary gain, replaced most top-10 lists
    assert free[0].aux_final < shielded[0].aux_final
    assert free[1].overlap.mean() < 0.5, free[1].overlap.mean()
    # frozen: bit-identical store and rankings
    assert torch.equal(frozen[0].E, E0) and frozen[1].overlap.min() == 1.0
    assert frozen[1].max_score_change.max() == 0.0


def test_full_energy_basis_is_bit_identical_to_frozen_on_trained_ranker(trained):
    model, data = trained
    E0 = model.item_table.detach().clone()
    H = user_states(model, data.sequences("train"), 200, 1024, 0, torch.device("cpu"))
    Q = compute_basis(H, E0[1:], 1.0)["Q"]
    T = genre_targets(data)
    full = coadapt(E0, T, ShieldConfig(trust_radius=None), Q, steps=20, store_lr=STORE_LR)
    frozen = coadapt(E0, T, ShieldConfig(mode="frozen"), None, steps=20, store_lr=STORE_LR)
    assert torch.equal(full.E, frozen.E)
    ref = reference_scores(model, data, "test")
    rep = drift_report(model, data, "test", full.E, reference=ref)
    assert rep.max_score_change.max() == 0.0 and rep.overlap.min() == 1.0
