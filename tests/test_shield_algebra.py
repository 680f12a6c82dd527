"""The shield's algebra on random tensors (no data, no trained ranker): projector properties, the update
projection under AdamW with weight decay vs the gradient-only ablation, frozen / τ = 1, padding row,
trust region, and the basis checks."""

from __future__ import annotations

import pytest
import torch

from shielded_recrl.common.errors import InputError
from shielded_recrl.projection.basis import compute_basis, random_basis
from shielded_recrl.projection.shield import (Shield, ShieldConfig, bound_rows, check_basis, complement, leak_ratio,
                                              project_out, trust_region)
from shielded_recrl.ranker.model import SASRec, SASRecConfig

D, R, N = 32, 24, 200


def _Q(d=D, r=R, seed=0):
    return random_basis(d, r, torch.Generator().manual_seed(seed))


def _coadapt(cfg: ShieldConfig, Q, steps=200, weight_decay=0.1, seed=0):
    """``steps`` AdamW steps on E (N+1 × D, row 0 padding) towards random targets; returns (E0, E_T)."""
    g = torch.Generator().manual_seed(seed)
    E = torch.nn.Parameter(torch.randn(N + 1, D, generator=g) * 0.1)
    with torch.no_grad():
        E[0].zero_()
    target = torch.randn(N + 1, D, generator=g)
    shield = Shield(E, Q, cfg)
    E0 = E.detach().clone()
    opt = torch.optim.AdamW([E], lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        loss = ((E - target) ** 2).sum()
        opt.zero_grad()
        if E.requires_grad:
            loss.backward()
        shield.before_step()
        opt.step()
        shield.after_step()
    return E0, E.detach().clone()


def test_basis_orthonormal_and_projector_idempotent_symmetric():
    g = torch.Generator().manual_seed(1)
    H, E = torch.randn(500, D, generator=g) * 5, torch.randn(300, D, generator=g)
    b = compute_basis(H, E, 0.9, "both")
    Q = b["Q"]
    assert Q.shape == (D, b["rank"]) and 0 < b["rank"] < D
    assert torch.allclose(Q.T @ Q, torch.eye(b["rank"]), atol=1e-5)
    P = torch.eye(D) - Q @ Q.T
    assert torch.allclose(P @ P, P, atol=1e-5)  # idempotent
    assert torch.allclose(P, P.T, atol=1e-6)  # symmetric
    X = torch.randn(50, D, generator=g)
    assert torch.allclose(project_out(X, Q), X @ P, atol=1e-5)
    assert (project_out(X, Q) @ Q).abs().max() < 1e-5


def test_update_projection_holds_after_200_adamw_steps_with_weight_decay():
    Q = _Q()
    E0, ET = _coadapt(ShieldConfig(trust_radius=None), Q, steps=200, weight_decay=0.1)
    D_ = ET - E0
    assert D_.norm() > 1.0  # it did move
    assert leak_ratio(D_, Q) < 1e-6


def test_gradient_only_projection_leaks_under_adamw():
    """The ablation: projecting the gradient does not keep Adam's update in the complement."""
    Q = _Q()
    E0, ET = _coadapt(ShieldConfig(trust_radius=None, project="gradient"), Q, steps=200, weight_decay=0.1)
    assert leak_ratio(ET - E0, Q) > 0.05
    # and not only because of weight decay: Adam's per-coordinate scaling alone leaks
    E0, ET = _coadapt(ShieldConfig(trust_radius=None, project="gradient"), Q, steps=200, weight_decay=0.0)
    assert leak_ratio(ET - E0, Q) > 0.05


def test_frozen_leaves_store_bit_identical():
    E0, ET = _coadapt(ShieldConfig(mode="frozen"), None, steps=20)
    assert torch.equal(E0, ET)
    # even if the parameter still sits in an optimizer with weight decay and requires grad
    E = torch.nn.Parameter(torch.randn(N + 1, D))
    shield = Shield(E, None, ShieldConfig(mode="frozen"))
    E.requires_grad_(True)
    E0 = E.detach().clone()
    opt = torch.optim.AdamW([E], lr=0.1, weight_decay=0.5)
    for _ in range(5):
        opt.zero_grad()
        (E ** 3).sum().backward()
        shield.step(opt)
    assert torch.equal(E.detach(), E0)


def test_full_rank_basis_equals_frozen_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    b = compute_basis(torch.randn(100, D, generator=g), torch.randn(80, D, generator=g), 1.0)
    assert b["rank"] == D
    E0, ET = _coadapt(ShieldConfig(trust_radius=None), b["Q"], steps=50)
    assert torch.equal(E0, ET)


def test_full_rank_rankings_bit_identical_to_frozen_on_sasrec():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=60, hidden=16, n_layers=1, n_heads=1, max_len=10)).eval()
    seqs = torch.randint(1, 61, (12, 10))
    b = compute_basis(torch.randn(40, 16), model.item_table.detach()[1:], 1.0)
    tables = {}
    for mode, Q in (("frozen", None), ("shielded", b["Q"])):
        E = torch.nn.Parameter(model.item_table.detach().clone())
        shield = Shield(E, Q, ShieldConfig(mode=mode, trust_radius=0.5))
        opt = torch.optim.AdamW([E], lr=1e-2, weight_decay=0.1)
        for _ in range(10):
            opt.zero_grad()
            if E.requires_grad:
                (E.sum(1) ** 2).sum().backward()
            shield.step(opt)
        tables[mode] = E.detach()
    with torch.no_grad():
        s = {m: model.scores(model.user_state(seqs, t), t) for m, t in tables.items()}
    assert torch.equal(s["frozen"], s["shielded"])
    assert torch.equal(s["frozen"].topk(10).indices, s["shielded"].topk(10).indices)


def test_padding_row_restored_in_every_moving_mode():
    for cfg, Q in ((ShieldConfig(trust_radius=None), _Q()),
                   (ShieldConfig(mode="no_projection", trust_radius=None), None),
                   (ShieldConfig(project="gradient", trust_radius=None), _Q())):
        E0, ET = _coadapt(cfg, Q, steps=30)
        assert torch.equal(ET[0], E0[0])
        assert (ET[1:] - E0[1:]).norm() > 0


@pytest.mark.parametrize("rho", [0.05, 0.2])
def test_trust_region_bounds_every_row(rho):
    Q = _Q(r=8)
    E0, ET = _coadapt(ShieldConfig(trust_radius=rho), Q, steps=100)
    rel = (ET - E0)[1:].norm(dim=1) / E0[1:].norm(dim=1)
    assert rel.max() <= rho * (1 + 1e-5)
    assert rel.max() >= rho * 0.99  # the objective pushes rows to the boundary: the bound is active
    assert leak_ratio(ET - E0, Q) < 1e-6  # rescaling rows keeps the displacement ⟂ Q


def test_trust_region_function_leaves_inside_rows_alone():
    E0 = torch.ones(3, 4)
    E = E0.clone()
    E[1] += 0.01
    E[2] += 10.0
    out = trust_region(E, E0, 0.1)
    assert torch.equal(out[0], E0[0]) and torch.equal(out[1], E[1])
    assert torch.isclose((out[2] - E0[2]).norm(), 0.1 * E0[2].norm())


# Both ways of applying I − QQᵀ: X − (XQ)Qᵀ when r ≤ d/2, (X Q⊥) Q⊥ᵀ with the complement basis when r > d/2.
BRANCHES = pytest.mark.parametrize("r", [8, 24], ids=["r<=d/2:Q", "r>d/2:Q_free"])


@BRANCHES
def test_shield_uses_the_branch_its_rank_calls_for(r):
    shield = Shield(torch.nn.Parameter(torch.randn(N + 1, D)), _Q(r=r), ShieldConfig())
    assert (shield.Q_free is not None) == (2 * r > D)


@BRANCHES
def test_complement_form_of_project_out_equals_the_q_form(r):
    Q = _Q(r=r)
    Qf = complement(Q)
    assert Qf.shape == (D, D - r) and (Q.T @ Qf).abs().max() < 1e-5
    X = torch.randn(50, D, generator=torch.Generator().manual_seed(3))
    ref = project_out(X, Q)
    assert torch.allclose(project_out(X, Q, Qf), ref, atol=1e-5)
    for Q_free in (None, Qf):  # in place: the same numbers, written into X
        X2 = X.clone()
        out = project_out(X2, Q, Q_free, inplace=True)
        assert out.data_ptr() == X2.data_ptr() and torch.equal(out, project_out(X, Q, Q_free))


@BRANCHES
def test_shield_with_trust_region_holds_after_many_adamw_steps_with_weight_decay(r):
    Q, rho = _Q(r=r), 0.2
    E0, ET = _coadapt(ShieldConfig(trust_radius=rho), Q, steps=300, weight_decay=0.1)
    D_ = ET - E0
    assert D_.norm() > 0.5  # it did move
    assert leak_ratio(D_, Q) < 1e-5
    rel = D_[1:].norm(dim=1) / E0[1:].norm(dim=1)
    assert rel.max() <= rho * (1 + 1e-5)
    assert rel.max() >= rho * 0.99  # the objective pushes rows to the boundary: the bound is active
    assert torch.equal(ET[0], E0[0])


@BRANCHES
@pytest.mark.parametrize("rho", [None, 0.1])
def test_after_step_is_the_helpers_composed_by_hand(r, rho):
    """after_step = E0 + bound_rows(project_out(E_new − E0, Q, Q⊥), ρ‖e_i⁰‖), padding row restored."""
    g = torch.Generator().manual_seed(7)
    E = torch.nn.Parameter(torch.randn(N + 1, D, generator=g) * 0.1)
    with torch.no_grad():
        E[0].zero_()
    target = torch.randn(N + 1, D, generator=g)
    shield = Shield(E, _Q(r=r), ShieldConfig(trust_radius=rho))
    opt = torch.optim.AdamW([E], lr=5e-2, weight_decay=0.1)
    for _ in range(8):
        opt.zero_grad()
        ((E - target) ** 2).sum().backward()
        opt.step()
        E_new = E.detach().clone()
        shield.after_step()
        step = project_out(E_new - shield.E0, shield.Q, shield.Q_free)
        if rho is not None:
            step = bound_rows(step, rho * shield.E0.norm(dim=1, keepdim=True))
        want = shield.E0 + step
        want[0] = shield.E0[0]
        assert torch.equal(E.detach(), want)


def test_no_projection_trust_region_is_the_trust_region_function():
    g = torch.Generator().manual_seed(8)
    E = torch.nn.Parameter(torch.randn(N + 1, D, generator=g))
    shield = Shield(E, None, ShieldConfig(mode="no_projection", trust_radius=0.1, padding_idx=None))
    opt = torch.optim.AdamW([E], lr=0.5, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        (E ** 2).sum().backward()
        opt.step()
        E_new = E.detach().clone()
        shield.after_step()
        assert torch.equal(E.detach(), trust_region(E_new, shield.E0, 0.1))


def test_bound_rows_in_place_and_out_of_place_agree():
    D_ = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    limit = torch.full((6, 1), 1.0)
    out = bound_rows(D_, limit)
    assert out.norm(dim=1).max() <= 1.0 + 1e-6
    inside = D_.norm(dim=1) <= 1.0
    assert torch.equal(out[inside], D_[inside])
    D2 = D_.clone()
    assert torch.equal(bound_rows(D2, limit, inplace=True), out) and torch.equal(D2, out)


def test_mismatched_d_or_ranker_hash_refused():
    Q = _Q()
    basis = {"Q": Q, "d": D, "ranker_sha256": "a" * 64}
    check_basis(basis, d=D, ranker_sha256="a" * 64, source="basis.pt")  # matches: fine
    with pytest.raises(InputError) as err:
        check_basis(basis, d=64, ranker_sha256="a" * 64, source="basis.pt")
    assert "basis.pt" in str(err.value) and "d = 64" in str(err.value) and f"d = {D}" in str(err.value)
    with pytest.raises(InputError) as err:
        check_basis(basis, d=D, ranker_sha256="b" * 64, source="basis.pt")
    assert "a" * 64 in str(err.value) and "b" * 64 in str(err.value)
    E = torch.nn.Parameter(torch.randn(5, 64))
    with pytest.raises(InputError):
        Shield(E, Q, ShieldConfig())


def test_non_orthonormal_basis_refused():
    with pytest.raises(InputError):
        check_basis({"Q": torch.randn(D, 4), "d": D, "ranker_sha256": None}, d=D, ranker_sha256=None)


def test_stats_report_leak_drift_and_bound():
    Q = _Q(r=8)
    g = torch.Generator().manual_seed(5)
    E = torch.nn.Parameter(torch.randn(N + 1, D, generator=g))
    shield = Shield(E, Q, ShieldConfig(trust_radius=0.1))
    opt = torch.optim.AdamW([E], lr=0.5, weight_decay=0.1)
    opt.zero_grad()
    (E ** 2).sum().backward()
    shield.step(opt)
    st = shield.stats()
    assert st["shield/leak_ratio"] < 1e-6
    assert 0 < st["shield/drift_rel"] <= 0.1 + 1e-6
    assert st["shield/row_drift_max"] <= 0.1 * (1 + 1e-5) and st["shield/rows_at_bound"] > 0.5
