"""The shield: keeps the ranker's scores ``s(u, i) = h_uᵀ e_i`` (nearly) fixed while the shared item store
``E`` co-adapts to another objective (DESIGN.md §1 "Shield", "Projection must hold for the update").

After every optimizer step on ``E`` the shield

1. projects the *update* onto the orthogonal complement of the ranking subspace ``Q`` (d × r,
   orthonormal columns): ``E ← E_old + (E_new − E_old)(I − QQᵀ)``. The parameter delta, not the gradient,
   is projected, so AdamW's per-coordinate scaling and its decoupled weight decay (Loshchilov & Hutter,
   2019) cannot move ``E`` inside ``span(Q)``;
2. keeps each row in a trust region around its original value, ``‖e_i − e_i⁰‖ ≤ ρ‖e_i⁰‖``, by rescaling
   that row's displacement (the complement of ``Q`` still carries a little ranking signal, and nothing
   else bounds how far the released directions move as updates accumulate);
3. restores the padding row.

Modes (the trainer's flags, DESIGN.md §1 table): ``shielded`` (the above), ``no_projection`` (``E``
co-adapts freely; the trust region still applies if ``trust_radius`` is set), ``frozen`` (``E`` never
changes, bit for bit). ``project="gradient"`` is the ablation that projects the gradient before the step
and not the update; ``shield_study.py`` measures how much of the update then leaks into ``span(Q)``.

Usage (one shield per shared parameter)::

    shield = Shield(model.item_emb.weight, Q, ShieldConfig(trust_radius=0.2))
    loss.backward()
    shield.before_step()        # only the gradient-only ablation does anything here
    optimizer.step()
    shield.after_step()

Pure library: no file I/O. Loading and checking a basis file lives in ``artifacts.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from ..common.errors import InputError

MODES = ("shielded", "no_projection", "frozen")
PROJECT = ("update", "gradient")


@dataclasses.dataclass
class ShieldConfig:
    """Defaults chosen by ``shield_study.py`` on ML-100K (docs/shield.md, "Choice of τ and ρ")."""

    mode: str = dataclasses.field(default="shielded", metadata={"help": "shielded | no_projection | frozen",
                                                                  "choices": MODES})
    energy: float = dataclasses.field(default=0.99, metadata={
        "help": "cumulative spectral energy τ the basis keeps (run_basis.py --energy); 1 = whole space = frozen"})
    trust_radius: float | None = dataclasses.field(default=0.2, metadata={
        "help": "ρ: per-row bound ‖e_i − e_i⁰‖ ≤ ρ‖e_i⁰‖ (None = unbounded)"})
    project: str = dataclasses.field(default="update", metadata={
        "help": "update (the method) | gradient (ablation: projects grads only, leaks under AdamW)",
        "choices": PROJECT})
    padding_idx: int | None = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"shield mode must be one of {MODES}, got {self.mode!r}")
        if self.project not in PROJECT:
            raise ValueError(f"shield project must be one of {PROJECT}, got {self.project!r}")
        if self.trust_radius is not None and self.trust_radius < 0:
            raise ValueError(f"trust_radius must be ≥ 0 or None, got {self.trust_radius}")
        if not 0 < self.energy <= 1:
            raise ValueError(f"energy τ must be in (0, 1], got {self.energy}")


def check_orthonormal(Q: torch.Tensor, tol: float = 1e-4, source: str = "basis Q") -> None:
    """``QᵀQ = I`` within ``tol`` (float32 SVD output is orthonormal to ~1e-6)."""
    if Q.ndim != 2 or Q.shape[1] > Q.shape[0]:
        raise InputError(source, "a d × r matrix with r ≤ d", f"shape {tuple(Q.shape)}")
    Qd = Q.double()
    eye = torch.eye(Q.shape[1], dtype=torch.float64, device=Q.device)
    err = (Qd.T @ Qd - eye).abs().max().item() if Q.numel() else 0.0
    if err > tol:
        raise InputError(source, f"orthonormal columns (max |QᵀQ − I| ≤ {tol})", f"max |QᵀQ − I| = {err:.2e}")


def check_basis(basis: Mapping[str, Any], *, d: int, ranker_sha256: str | None, source: str = "basis") -> None:
    """Refuse a basis built for another ranker or another hidden size (DESIGN.md §1)."""
    if int(basis["d"]) != int(d) or basis["Q"].shape[0] != int(d):
        raise InputError(source, f"a basis for hidden size d = {d} (the ranker's)",
                         f"d = {int(basis['d'])} (Q of shape {tuple(basis['Q'].shape)})",
                         "Rebuild it: python code/projection/run_basis.py --ranker_ckpt <the ranker you use>.")
    if ranker_sha256 is not None and basis.get("ranker_sha256") != ranker_sha256:
        raise InputError(source, f"a basis built from the ranker with sha256 {ranker_sha256}",
                         f"ranker sha256 {basis.get('ranker_sha256')}",
                         "The ranker changed since the basis was built; re-run run_basis.py on it.")
    check_orthonormal(basis["Q"], source=str(source))


def project_out(X: torch.Tensor, Q: torch.Tensor | None, Q_free: torch.Tensor | None = None,
                inplace: bool = False) -> torch.Tensor:
    """``X (I − QQᵀ)``, never forming the d × d projector.

    ``Q_free`` (d × (d − r)), when given, is an orthonormal basis of the complement of ``span(Q)``
    (:func:`complement`); since ``I − QQᵀ = Q⊥Q⊥ᵀ`` the product is then ``(X Q⊥) Q⊥ᵀ``, O(n d (d − r))
    instead of ``X − (XQ)Qᵀ``'s O(n d r): the cheaper form when r > d/2. ``inplace`` writes the result
    into ``X`` (which must then not be needed afterwards) and returns it.
    """
    if Q is None or Q.shape[1] == 0:
        return X
    if Q.shape[1] == Q.shape[0]:  # full rank: the complement is {0}; exact zero instead of rounding noise
        return X.zero_() if inplace else torch.zeros_like(X)
    if Q_free is not None:
        C = X @ Q_free  # METHOD: coordinates in the released directions
        return torch.mm(C, Q_free.T, out=X) if inplace else C @ Q_free.T
    XQ = (X @ Q) @ Q.T
    return X.sub_(XQ) if inplace else X - XQ  # METHOD: remove the ranking-subspace component


def _row_scale(D: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """Per-row factor (n, 1) that shrinks rows with ‖D_i‖ > limit_i onto the boundary, 1 elsewhere."""
    norm = D.norm(dim=1, keepdim=True)
    return torch.where(norm > limit, limit / norm.clamp_min(torch.finfo(D.dtype).tiny), torch.ones_like(norm))


def bound_rows(D: torch.Tensor, limit: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The trust region on a displacement ``D = E − E0``: rows with ``‖D_i‖ > limit_i`` (``limit`` is
    (n, 1)) are rescaled onto the boundary, the others are untouched (scale 1). A row rescale keeps a
    displacement that is ⟂ Q orthogonal to Q. ``inplace`` rescales ``D`` itself."""
    scale = _row_scale(D, limit)
    return D.mul_(scale) if inplace else D * scale


def trust_region(E: torch.Tensor, E0: torch.Tensor, rho: float) -> torch.Tensor:
    """Rescale each row's displacement so that ``‖e_i − e_i⁰‖ ≤ ρ‖e_i⁰‖``.

    A row whose original vector is zero (the padding row, or an all-zero item) may not move at all.
    """
    limit = rho * E0.norm(dim=1, keepdim=True)  # METHOD: per-row trust radius ρ‖e_i⁰‖
    return E0 + bound_rows(E - E0, limit)


def complement(Q: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d × (d − r)) of the orthogonal complement of ``span(Q)``: the eigenvectors of
    ``I − QQᵀ`` with eigenvalue 1 (float64 eigh), cleaned by one Gram-Schmidt pass against ``Q``."""
    d, r = Q.shape
    Qd = Q.double()
    _, V = torch.linalg.eigh(torch.eye(d, dtype=torch.float64, device=Q.device) - Qd @ Qd.T)  # ascending
    Qf = V[:, r:]
    Qf = torch.linalg.qr(Qf - Qd @ (Qd.T @ Qf))[0]
    return Qf.to(Q.dtype).contiguous()


class Shield:
    """Guards one shared parameter (``E``, rows = items) during co-adaptation.

    ``Q`` (d × r, orthonormal) may be None: then there is nothing to project (``no_projection`` or
    ``frozen``). ``E0`` defaults to the parameter's value when the shield is made.
    """

    def __init__(self, param: torch.nn.Parameter, Q: torch.Tensor | None, cfg: ShieldConfig | None = None,
                 E0: torch.Tensor | None = None):
        self.cfg = cfg or ShieldConfig()
        self.param = param
        self.E0 = (param.detach() if E0 is None else E0.to(param)).clone()
        if self.cfg.mode == "shielded":
            if Q is None:
                raise ValueError("shielded mode needs a basis Q (use mode='no_projection' to run without one)")
            if Q.shape[0] != param.shape[1]:
                raise InputError("basis Q", f"{param.shape[1]} rows (the store's d)", f"{Q.shape[0]} rows")
            check_orthonormal(Q)
            self.Q = Q.detach().to(device=param.device, dtype=param.dtype).contiguous()
            # An orthonormal basis of the released directions (d × (d − r)): when r > d/2 it is the cheaper
            # way to apply I − QQᵀ = Q⊥Q⊥ᵀ (O(n d (d − r)) instead of O(n d r)).
            self.Q_free = complement(self.Q) if 2 * Q.shape[1] > Q.shape[0] else None
        else:
            self.Q = self.Q_free = None
        self._limit = (self.cfg.trust_radius * self.E0.norm(dim=1, keepdim=True)
                       if self.cfg.trust_radius is not None else None)

    @property
    def trains_store(self) -> bool:
        """Whether the store receives gradients and an optimizer: the one place this is decided (every mode
        but ``frozen``; the PPO trainer applies it with ``Explainer.set_store_grad``)."""
        return self.cfg.mode != "frozen"

    @property
    def full_rank(self) -> bool:
        return self.Q is not None and self.Q.shape[1] == self.Q.shape[0]

    @torch.no_grad()
    def before_step(self) -> None:
        """Call after ``backward()`` and before ``optimizer.step()``."""
        grad = self.param.grad
        if self.cfg.mode == "shielded" and self.cfg.project == "gradient" and grad is not None:
            grad.copy_(project_out(grad, self.Q))  # the ablation: exact for SGD, leaks under Adam(W)

    @torch.no_grad()
    def after_step(self) -> None:
        """Call right after ``optimizer.step()``: project the update, bound it, restore padding."""
        p, E0, cfg = self.param, self.E0, self.cfg
        if cfg.mode == "frozen":
            p.copy_(E0)  # bit-identical even if someone put E in an optimizer with weight decay
            return
        project = cfg.mode == "shielded" and cfg.project == "update"
        if project and self.full_rank:
            p.copy_(E0)  # the complement is {0}: exactly frozen
            return
        if project or self._limit is not None:
            # METHOD: E ← E_old + (E_new − E_old)(I − QQᵀ). Every earlier step kept E_old − E0 ⟂ Q, so this
            # equals E0 + (E_new − E0)(I − QQᵀ); projecting the whole displacement also removes the
            # float rounding that would otherwise accumulate in span(Q) over thousands of steps, and needs
            # no copy of E_old.
            D = p.detach() - E0  # the displacement; both helpers below update it in place
            if project:
                project_out(D, self.Q, self.Q_free, inplace=True)
            if self._limit is not None:
                bound_rows(D, self._limit, inplace=True)  # METHOD: trust region ‖e_i − e_i⁰‖ ≤ ρ‖e_i⁰‖
            torch.add(E0, D, out=p.data)
        if cfg.padding_idx is not None:
            p.data[cfg.padding_idx] = E0[cfg.padding_idx]

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``before_step(); optimizer.step(); after_step()``."""
        self.before_step()
        optimizer.step()
        self.after_step()

    @torch.no_grad()
    def stats(self, Q: torch.Tensor | None = None) -> dict[str, float]:
        """Drift of ``E`` from ``E0``: leak ratio ``‖ΔE Q‖/‖ΔE‖`` (w.r.t. ``Q`` or the shield's basis),
        relative drift ``‖ΔE‖/‖E0‖``, the largest row drift relative to ``‖e_i⁰‖`` and the share of rows
        at the trust boundary."""
        D = (self.param.detach() - self.E0).double()
        E0 = self.E0.double()
        Q = self.Q if Q is None else Q
        total = D.norm().item()
        out = {"shield/drift_rel": total / max(E0.norm().item(), 1e-30)}
        row0 = E0.norm(dim=1)
        rel = D.norm(dim=1) / row0.clamp_min(1e-30)
        rel = rel[row0 > 0]
        out["shield/row_drift_max"] = rel.max().item() if rel.numel() else 0.0
        if self.cfg.trust_radius is not None and rel.numel():
            out["shield/rows_at_bound"] = (rel >= self.cfg.trust_radius * (1 - 1e-4)).double().mean().item()
        if Q is not None:
            out["shield/leak_ratio"] = leak_ratio(D, Q)
        return out


def leak_ratio(D: torch.Tensor, Q: torch.Tensor) -> float:
    """``‖D Q‖_F / ‖D‖_F`` in float64: the share of a displacement inside the protected subspace
    (0 = none; a random direction gives about sqrt(r/d))."""
    D = D.double()
    total = D.norm().item()
    return (D @ Q.double()).norm().item() / total if total > 0 else 0.0
