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
from typing import Callable, NamedTuple

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


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(B, T) → (B, T): ``(x − mean) / sqrt(var + eps)`` over masked positions; padding set to 0.

    Advantage normalisation (Huang et al. 2022, detail #7). With ``shift_mean=False`` only the scale
    changes (TRL whitens rewards that way). The variance is Bessel-corrected. ``total`` (data parallel:
    the sum over ranks) makes mean and variance those of every rank's positions together.
    """
    if total is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        m = mask.to(x.dtype)
        n, sx = total(torch.stack([m.sum(), (x * m).sum()]))
        mean = sx / n.clamp_min(1.0)
        var = total(((x - mean) ** 2 * m).sum()) / n.clamp_min(1.0) * n / (n - 1).clamp_min(1.0)
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
    ``0.5 · mean max((v − R)², (old_v + clip(v − old_v, −ε, ε) − R)²)``; ``clip ≤ 0``: ``0.5 · mean (v − R)²``.
    Returns ``(loss, clip_frac)``."""
    l1 = (v - returns) ** 2
    if clip <= 0:  # no clipping (the default: a clip in reward units depends on the reward's scale)
        return 0.5 * masked_mean(l1, mask), torch.zeros((), dtype=v.dtype, device=v.device)
    v_clipped = old_v + torch.clamp(v - old_v, -clip, clip)
    l2 = (v_clipped - returns) ** 2
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


def lr_scale(step: int, max_steps: int, warmup_steps: int = 0, decay: str = "constant") -> float:
    """The factor on every learning rate at PPO iteration ``step`` (0-based) of ``max_steps``.

    Warm-up: iteration ``k < W`` uses ``(k + 1)/W`` — AdamW's first steps move every parameter by about the
    learning rate whatever the gradient's size (its second moment is one or two batches old), so a ramp
    keeps the first noisy batches from moving the warm start far. After it, ``constant`` keeps 1 and
    ``linear`` falls to ``1/(N − W)`` at the last iteration, never 0 — the decay of transformers'
    ``get_linear_schedule_with_warmup`` (TRL's default); its warm-up is ``k/W``, whose first step has rate 0.
    """
    if not 0 <= step < max_steps:
        raise ValueError(f"step must be in [0, max_steps) = [0, {max_steps}); found {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if decay == "linear":
        return (max_steps - step) / (max_steps - warmup_steps)
    raise ValueError(f"decay must be 'constant' or 'linear'; found {decay!r}")


# --- group baselines (DESIGN.md §4.2 "Advantages come from groups") -------------------------------------
ADVANTAGES = ("rloo", "grpo", "gae")


def group_advantages(score: torch.Tensor, group_size: int, kind: str = "rloo", eps: float = 1e-6) -> torch.Tensor:
    """Sequence-level advantages from groups of ``group_size`` samples of one prompt. (B,) → (B,).

    ``score`` holds consecutive groups (rows ``g·G … g·G + G − 1`` share a prompt).

    - ``rloo``: ``A_i = r_i − mean_{j≠i} r_j`` — the leave-one-out baseline, unbiased because the
      baseline does not depend on sample i (Ahmadian et al. 2024, "Back to Basics: Revisiting
      REINFORCE-Style Optimization for Learning from Human Feedback in LLMs", arXiv:2402.14740, eq. 7;
      Kool et al. 2019). Equal to ``G/(G−1) · (r_i − mean_j r_j)``.
    - ``grpo``: ``A_i = (r_i − mean_j r_j) / (std_j r_j + eps)`` — group-normalised (Shao et al. 2024,
      "DeepSeekMath", arXiv:2402.03300, §4.1.2; std without Bessel's correction, as TRL's GRPOTrainer).

    A group whose samples all score the same gets advantage 0 under either: whatever the user and the
    item contribute to the reward (the same for every sample of a prompt) cancels.
    """
    # METHOD: the per-prompt baseline — the user/item part of the reward cancels inside a group
    if kind not in ("rloo", "grpo"):
        raise ValueError(f"group advantage kind must be 'rloo' or 'grpo'; found {kind!r}")
    if group_size < 2:
        raise ValueError(f"a group advantage needs group_size ≥ 2; found {group_size}")
    if score.ndim != 1 or score.numel() % group_size:
        raise ValueError(f"score must be (B,) with B a multiple of group_size {group_size}; "
                         f"found shape {tuple(score.shape)}")
    r = score.reshape(-1, group_size).double()
    mean = r.mean(1, keepdim=True)
    if kind == "rloo":
        adv = (r - mean) * (group_size / (group_size - 1))
    else:
        adv = (r - mean) / (r.std(1, unbiased=False, keepdim=True) + eps)
    return adv.reshape(-1).to(score.dtype)


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Σ_t KL_t over each response's tokens: (B, T) → (B,) (the KL of a whole explanation)."""
    return (kl_penalty(logp, ref_logp, kind) * mask.to(logp.dtype)).sum(1)


def advantages(kind: str, score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor, *, kl_beta: float, kl_kind: str = "k1", group_size: int = 1, gamma: float = 1.0,
               lam: float = 0.95, total: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token advantages of one PPO batch → ``(advantages, returns, kl)``, each (B, T), 0 on padding.

    ``score`` (B,) the reward of each response (rows grouped by prompt for ``rloo``/``grpo``); ``kl`` is the
    per-token KL estimate to the reference policy.

    - ``rloo`` / ``grpo``: the sequence reward ``score − kl_beta·Σ_t KL_t`` gets its group baseline
      (:func:`group_advantages`) and every response token carries that advantage; ``returns`` is 0 (no
      critic).
    - ``gae``: per-token rewards (:func:`per_token_rewards`), :func:`gae` on ``values``, then
      :func:`whiten` over the batch's tokens (``total``: the sum over data-parallel ranks, so the batch is
      every rank's; group advantages are per prompt and need no such sum).
    """
    m = mask.to(logp.dtype)
    if kind == "gae":
        rewards, kl = per_token_rewards(score, logp, ref_logp, mask, kl_beta, kl_kind)
        adv, returns = gae(rewards, values, mask, gamma, lam)  # METHOD: GAE (Schulman et al. 2016)
        n_tok = int(mask.sum()) if total is None else int(total(mask.sum().double()))
        if n_tok >= 2:
            adv = whiten(adv, mask, total=total)  # METHOD: advantage whitening (Huang et al. 2022 #7)
        return adv, returns, kl
    kl = kl_penalty(logp, ref_logp, kl_kind) * m
    # METHOD: KL to the warm start in the sequence reward, then the group baseline, broadcast over tokens
    seq = score.to(logp.dtype) - kl_beta * kl.sum(1)
    adv = group_advantages(seq, group_size, kind)[:, None] * m
    return adv, torch.zeros_like(adv), kl
