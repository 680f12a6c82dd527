"""Pure PPO maths for token-level RLHF-style training of the explainer. No I/O, no models.

Shapes: ``B`` responses in a batch, ``T`` response tokens (right-padded); ``mask`` (B, T) is 1 on
real response tokens and 0 on padding. Every mean over tokens is a *masked* mean over all real
tokens of the batch (not a mean of per-row means).

Sources:
- PPO clipped surrogate and value clipping: Schulman et al. 2017, "Proximal Policy Optimization
  Algorithms", arXiv:1707.06347, eq. (7).
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", arXiv:1506.02438, eq. (16).
- Implementation details (advantage whitening, value-loss clipping, approx-KL and clip-fraction
  diagnostics): Huang et al. 2022, "The 37 Implementation Details of Proximal Policy
  Optimization", ICLR blog track; CleanRL ``ppo.py``.
- Per-token KL penalty against a frozen reference policy, with the sequence score added at the
  last token: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
  arXiv:1909.08593; Stiennon et al. 2020, "Learning to summarize from human feedback",
  arXiv:2009.01325.
- KL estimators k1 (``log p − log q``) and k3 (``(r − 1) − log r``, r = q/p, unbiased, ≥ 0):
  J. Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (2020).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all dims). () scalar."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked positions; Bessel-corrected by default (as TRL's ``masked_var``). ()."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = masked_mean(x, mask)
    var = (((x - mean) ** 2) * mask).sum() / n.clamp_min(1.0)
    if unbiased:
        if n < 2:
            raise ValueError(f"unbiased masked variance needs at least 2 unmasked values; found {int(n)}")
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(B, T) → (B, T): ``(x − mean) / sqrt(var + eps)`` over masked positions; padding set to 0.

    Advantage normalisation (Huang et al. 2022, detail #7). With ``shift_mean=False`` only the scale
    changes (TRL whitens rewards that way). The variance is Bessel-corrected.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate from the sampled tokens' log-probs. (B, T) → (B, T).

    ``k1 = log π − log π_ref`` (unbiased, can be negative per token);
    ``k3 = (r − 1) − log r`` with ``r = π_ref / π`` (unbiased, always ≥ 0, lower variance) — Schulman's
    "Approximating KL Divergence".
    """
    # METHOD: the KL that keeps the explainer near the warm-start policy (the kl_beta ablation)
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_r = ref_logp - logp
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl_penalty kind must be 'k1' or 'k3'; found {kind!r}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask → (B,) long index of each row's last real token. Every row needs one."""
    if (mask.sum(-1) == 0).any():
        raise ValueError("every response needs at least one unmasked token; found an empty row in mask")
    pos = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(-1).values


def per_token_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      kl_beta: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level rewards ``r_t = −kl_beta · KL_t`` plus the sequence ``score`` at the last real token.

    ``score`` (B,) the simulator's reward per response; ``logp``/``ref_logp``/``mask`` (B, T).
    Returns ``(rewards, kl)``, both (B, T) and 0 on padding (Ziegler et al. 2019, §2.2;
    Stiennon et al. 2020, eq. 1).
    """
    m = mask.to(logp.dtype)
    kl = kl_penalty(logp, ref_logp, kind) * m
    # METHOD: per-token KL penalty; kl_beta = 0 is the "no KL" ablation
    rewards = -kl_beta * kl
    last = last_token_index(mask)
    rewards = rewards.scatter_add(1, last[:, None], score.to(rewards.dtype)[:, None])
    return rewards * m, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over token-level episodes (Schulman et al. 2016, eq. 16).

    ``rewards``, ``values``, ``mask`` (B, T). ``δ_t = r_t + γ V_{t+1} m_{t+1} − V_t`` and
    ``A_t = δ_t + γ λ m_{t+1} A_{t+1}``: the episode ends at the last real token (bootstrap value 0).
    Returns ``(advantages, returns)`` (B, T) with ``returns = A + V`` (the value target), 0 on padding.
    """
    B, T = rewards.shape
    m = mask.to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_m = m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v * next_m - values[:, t]
        last = (delta + gamma * lam * next_m * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # () the clipped surrogate to minimise
    clip_frac: torch.Tensor  # () fraction of tokens where the clipped term was taken
    approx_kl: torch.Tensor  # () k3 estimate of KL(π_old ‖ π) over the batch's tokens


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                        clip: float = 0.2) -> PolicyLoss:
    """PPO-clip (Schulman et al. 2017, eq. 7), all (B, T):
    ``L = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε))`` with ``ρ_t = exp(logp − old_logp)``.

    ``approx_kl`` is the k3 estimator ``mean((ρ − 1) − log ρ)`` (CleanRL, Huang et al. 2022 detail #12).
    """
    # METHOD: PPO's clipped surrogate objective
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(pg1, pg2), mask)
    with torch.no_grad():
        clip_frac = masked_mean((pg2 > pg1).to(logp.dtype), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return PolicyLoss(loss, clip_frac, approx_kl)


def clipped_value_loss(v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (Huang et al. 2022, detail #9), all (B, T):
    ``0.5 · mean max((v − R)², (old_v + clip(v − old_v, −ε, ε) − R)²)``. Returns ``(loss, clip_frac)``."""
    v_clipped = old_v + torch.clamp(v - old_v, -clip, clip)
    l1, l2 = (v - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        clip_frac = masked_mean((l2 > l1).to(v.dtype), mask)
    return loss, clip_frac


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``1 − Var[y − ŷ] / Var[y]`` over masked positions; NaN when ``Var[y] = 0`` (CleanRL's diagnostic:
    1 = the value head predicts the returns, 0 = no better than a constant, < 0 = worse)."""
    if mask is None:
        mask = torch.ones_like(y_true)
    var_y = masked_var(y_true, mask, unbiased=False)
    if var_y.item() == 0:
        return math.nan
    return float(1.0 - masked_var(y_true - y_pred, mask, unbiased=False) / var_y)
