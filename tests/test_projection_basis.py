"""Basis maths (Gram-matrix SVD, energy → rank, recipes, block normalisation) and the ranking-drift
measures, on random tensors; the entry point's invocations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import kendalltau

from shielded_recrl.eval.ranking_drift import (kendall_tau_union, max_score_change, paired_diff, topk_from_scores,
                                               topk_overlap)
from shielded_recrl.projection.basis import (block_normalise, compute_basis, energy_curve, gram_spectrum,
                                             rank_for_energy, spectrum_summary, stack)

REPO = Path(__file__).resolve().parents[1]


def test_gram_eigh_matches_full_svd():
    g = torch.Generator().manual_seed(0)
    scale = torch.diag(torch.logspace(0, -2, 16, dtype=torch.float64))
    M = torch.randn(400, 16, generator=g, dtype=torch.float64) @ scale
    S, V = gram_spectrum(M)
    _, S2, Vh = torch.linalg.svd(M, full_matrices=False)
    assert torch.allclose(S, S2, rtol=1e-8)
    # same right singular vectors up to sign
    assert torch.allclose((V.T @ Vh.T).abs().diagonal(), torch.ones(16, dtype=torch.float64), atol=1e-6)


def test_energy_rank_and_full_rank():
    S = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert torch.allclose(energy_curve(S), torch.tensor([9 / 14, 13 / 14, 1.0, 1.0], dtype=torch.float64))
    assert rank_for_energy(S, 0.5) == 1 and rank_for_energy(S, 0.9) == 2 and rank_for_energy(S, 0.95) == 3
    assert rank_for_energy(S, 1.0) == 4  # τ = 1 is the whole space, even with a zero singular value
    assert spectrum_summary(S) == {"rank@0.9": 2, "rank@0.95": 3, "rank@0.99": 3, "rank@0.999": 3}
    with pytest.raises(ValueError):
        rank_for_energy(S, 0.0)


def test_block_normalisation_keeps_the_larger_block_from_dominating():
    g = torch.Generator().manual_seed(3)
    H = torch.zeros(300, 8)
    H[:, 0] = 20 * torch.randn(300, generator=g)  # users: huge, along axis 0
    E = torch.zeros(300, 8)
    E[:, 1] = torch.randn(300, generator=g)  # items: small, along axis 1
    assert torch.isclose(block_normalise(H).pow(2).sum(1).mean(), torch.tensor(1.0, dtype=torch.float64))
    Q = compute_basis(H, E, 0.9, "both")["Q"]
    assert Q.shape[1] == 2  # both directions kept; raw stacking would keep only the users' axis
    raw_S, _ = gram_spectrum(torch.cat([H, E]))
    assert rank_for_energy(raw_S, 0.9) == 1
    assert compute_basis(H, E, 0.9, "users")["Q"][:, 0].abs()[0] > 0.999
    assert compute_basis(H, E, 0.9, "items")["Q"][:, 0].abs()[1] > 0.999
    with pytest.raises(ValueError):
        stack(None, E, "both")


def test_topk_overlap_kendall_and_paired_se():
    g = torch.Generator().manual_seed(1)
    sa = torch.randn(6, 40, generator=g)
    sb = sa + 0.3 * torch.randn(6, 40, generator=g)
    ta, tb = topk_from_scores(sa, 10), topk_from_scores(sb, 10)
    assert (ta != 0).all()  # padding column never ranked
    assert torch.equal(topk_overlap(ta, ta), torch.ones(6, dtype=torch.float64))
    tau = kendall_tau_union(sa, sb, ta, tb)
    for u in range(6):
        items = sorted(set(ta[u].tolist()) | set(tb[u].tolist()))
        ref = kendalltau(sa[u, items].numpy(), sb[u, items].numpy(), variant="b").statistic
        assert abs(tau[u].item() - ref) < 1e-9
    assert torch.allclose(kendall_tau_union(sa, sa, ta, ta), torch.ones(6, dtype=torch.float64))
    reversed_ = kendall_tau_union(sa, -sa, ta, topk_from_scores(-sa, 10))
    assert torch.allclose(reversed_, -torch.ones(6, dtype=torch.float64))
    assert max_score_change(sa, sa + 0.5).max().item() == pytest.approx(0.5, abs=1e-6)
    a = torch.tensor([0.1, 0.2, 0.3, 0.4])
    b = torch.tensor([0.2, 0.2, 0.5, 0.4])
    pd_ = paired_diff(a, b)
    diff = (b - a).double()
    assert pd_.diff == pytest.approx(diff.mean().item())
    assert pd_.se == pytest.approx(diff.std(unbiased=True).item() / 2.0)


@pytest.mark.parametrize("how", ["script_in_folder", "module", "script_from_root"])
def test_run_basis_invocations(how):
    cmd = {"script_in_folder": ([sys.executable, "run_basis.py", "--help"], REPO / "code" / "projection"),
           "module": ([sys.executable, "-m", "shielded_recrl.projection.run_basis", "--help"], REPO),
           "script_from_root": ([sys.executable, "code/projection/run_basis.py", "--help"], REPO)}[how]
    res = subprocess.run(cmd[0], cwd=cmd[1], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for flag in ("--dataset", "--proj_dir", "--ranker_ckpt", "--output", "--energy", "--max_users", "--recipe"):
        assert flag in res.stdout


def test_shipped_yamls_match_their_configs():
    from shielded_recrl.common.configs import load_yaml, merge_yaml
    from shielded_recrl.projection.run_basis import BasisConfig
    from shielded_recrl.projection.shield import ShieldConfig
    from shielded_recrl.projection.shield_study import StudyConfig

    path = REPO / "experiments" / "projection.yaml"
    data = load_yaml(path)
    for ds in ("ml100k", "ml25m", "steam", "books"):
        cfg = merge_yaml(BasisConfig, BasisConfig(dataset=ds), dict(data), path, ds)
        # the stage's YAML and the shield's defaults agree (one choice, docs/shield.md)
        assert cfg.energy == ShieldConfig.energy and cfg.trust_radius == ShieldConfig.trust_radius
    for name in ("projection_study.yaml", "projection_study_quick.yaml"):
        path = REPO / "experiments" / name
        merge_yaml(StudyConfig, StudyConfig(), load_yaml(path), path, None)
