"""Co-adaptation of the shared item store to an auxiliary objective, under the shield (pure, no I/O).

This is the stand-in for what the explainer will ask of ``E`` (DESIGN.md §1): a trainable linear probe
``W`` maps each item vector ``e_i`` to the space of a target embedding ``t_i`` of the item (in the study:
the offline sentence encoder's embedding of the item's text), and ``E`` and ``W`` are trained together
with AdamW (decoupled weight decay on both) to align them. The loss *wants* to change ``E``: with ``E``
frozen only the probe adapts (the "frozen" reference loss), and the gain over it is what co-adaptation buys.

``shield_study.py`` runs this in every mode and measures what happens to the ranking; the tests run it on a
small trained ranker.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .shield import Shield, ShieldConfig


def aux_loss(E_items: torch.Tensor, probe: torch.nn.Linear, T: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over items of ``1 − cos(W e_i + b, t_i)`` (``cosine``) or ``‖W e_i + b − t_i‖²`` (``mse``)."""
    pred = probe(E_items)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, T, dim=1)).mean()
    if kind == "mse":
        return ((pred - T) ** 2).sum(1).mean()
    raise ValueError(f"aux loss must be cosine|mse, got {kind!r}")


class CoadaptResult(NamedTuple):
    """E: (N+1, d) the co-adapted store; aux_start/aux_final: the auxiliary loss before/after;
    aux_curve: loss at each step (K,); probe: the trained probe."""

    E: torch.Tensor
    aux_start: float
    aux_final: float
    aux_curve: torch.Tensor
    probe: torch.nn.Linear


def coadapt(E0: torch.Tensor, T: torch.Tensor, cfg: ShieldConfig, Q: torch.Tensor | None, *, steps: int,
            store_lr: float, probe_lr: float = 1e-2, weight_decay: float = 0.01, kind: str = "cosine",
            seed: int = 0) -> CoadaptResult:
    """``steps`` full-batch AdamW steps on (E, W) for the auxiliary loss, the shield after every step.

    ``E0`` (N+1, d) includes the padding row 0; ``T`` (N, t) holds the targets of items 1..N. The probe's
    initialisation depends only on ``seed``, so every mode starts from the same (E0, W0): paired runs.
    """
    g = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(E0.shape[1], T.shape[1])
    with torch.no_grad():
        bound = 1.0 / E0.shape[1] ** 0.5
        probe.weight.copy_(torch.empty_like(probe.weight).uniform_(-bound, bound, generator=g))
        probe.bias.zero_()
    E = torch.nn.Parameter(E0.detach().clone())
    shield = Shield(E, Q, cfg)
    E.requires_grad_(shield.trains_store)  # the shield's mode decides whether the store trains
    groups = [{"params": list(probe.parameters()), "lr": probe_lr}]
    if shield.trains_store:
        groups.append({"params": [E], "lr": store_lr})
    # betas as in the ranker's training; decoupled weight decay (Loshchilov & Hutter, 2019) on E and W
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=weight_decay)
    with torch.no_grad():
        start = float(aux_loss(E[1:], probe, T, kind))
    curve = torch.empty(steps)
    for step in range(steps):
        loss = aux_loss(E[1:], probe, T, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        shield.step(opt)  # METHOD: before_step → AdamW → project the update, trust region, padding row
        curve[step] = loss.detach()
    with torch.no_grad():
        final = float(aux_loss(E[1:], probe, T, kind))
    return CoadaptResult(E.detach().clone(), start, final, curve, probe)
