"""Next-item losses for SASRec at catalogue scale (pure tensor functions, no I/O).

Every function scores the hidden states ``h`` (P, d) of the P positions that have a target against the
item store ``E`` (N+1, d; row 0 = padding, never a class) and returns the mean loss over the P positions.
``targets`` (P,) are item ids 1..N.

- :func:`full_ce`: softmax cross-entropy over all N items. Its (P, N) logits are what does not fit at
  Amazon-Books scale: 256 windows × 50 positions × 712k items × 4 B = 36 GB, and as much again for
  their gradient.
- :func:`chunked_ce`: the same loss and the same gradients, the item table scored ``chunk_items`` at a
  time (memory P × chunk_items): a streaming log-sum-exp forward, a backward that recomputes each chunk.
- :func:`sampled_softmax`: softmax over the positive and K negatives shared by the batch, every logit
  corrected by − log Q(item) (Bengio & Senécal, IEEE TNN 2008; Jean et al., ACL 2015; Yi et al.,
  RecSys 2019, "Sampling-bias-corrected neural modeling for large corpus item recommendations"), a
  negative equal to the position's positive masked (an "accidental hit").
- :func:`gbce`: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023, arXiv:2308.07192).

:class:`NegativeSampler` draws the shared negatives (uniform or by train-split popularity) from an
explicit ``torch.Generator`` and carries ``log_q`` for the correction.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

NEGATIVE_KINDS = ("uniform", "popularity")


def full_ce(h: torch.Tensor, E: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over all N items: materialises the (P, N) logits."""
    logits = h @ E[1:].T  # (P, N): column j is item j+1; padding is never a class
    return F.cross_entropy(logits, targets - 1)


class _ChunkedCE(torch.autograd.Function):
    """Per-position ``logsumexp_j(h·w_j) − h·w_target`` over the rows of ``W`` (N, d), ``chunk`` rows at a
    time; the backward recomputes each chunk's logits instead of keeping them (memory P × chunk)."""

    @staticmethod
    def forward(ctx, h, W, target_rows, chunk):
        lse = torch.full((len(h),), float("-inf"), dtype=h.dtype, device=h.device)
        for s in range(0, len(W), chunk):
            logits = h @ W[s:s + chunk].T  # the one (P, chunk) buffer: the steps below work in place
            top = logits.max(dim=1).values
            lse = torch.logaddexp(lse, top + logits.sub_(top[:, None]).exp_().sum(dim=1).log())
        ctx.save_for_backward(h, W, target_rows, lse)
        ctx.chunk = chunk
        return lse - (h * W[target_rows]).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        h, W, target_rows, lse = ctx.saved_tensors
        # d loss_p / d logit_pj = g_p (softmax_pj − [j = target_p])
        grad_h, grad_W = torch.zeros_like(h), torch.zeros_like(W)
        for s in range(0, len(W), ctx.chunk):
            Wc = W[s:s + ctx.chunk]
            p = (h @ Wc.T).sub_(lse[:, None]).exp_().mul_(grad[:, None])  # (P, chunk) softmax × upstream grad
            grad_h += p @ Wc
            grad_W[s:s + ctx.chunk] = p.T @ h
        grad_h -= grad[:, None] * W[target_rows]
        grad_W.index_add_(0, target_rows, -grad[:, None] * h)
        return grad_h, grad_W, None, None


def chunked_ce(h: torch.Tensor, E: torch.Tensor, targets: torch.Tensor, chunk_items: int) -> torch.Tensor:
    """:func:`full_ce` computed ``chunk_items`` items at a time: the same loss and gradients (to float
    rounding) without ever holding the (P, N) logits; about 4/3 of its matmul work (one extra pass)."""
    if chunk_items < 1:
        raise ValueError(f"chunk_items must be ≥ 1; found {chunk_items}")
    return _ChunkedCE.apply(h, E[1:], targets - 1, chunk_items).mean()


class NegativeSampler(NamedTuple):
    """Draws K negatives shared by a batch, with replacement, from Q over items 1..N.

    log_q: (N+1,) float — log Q(item) of one draw (row 0, padding: -inf); what :func:`sampled_softmax`
           subtracts. An item Q never draws (popularity 0) has -inf; it can never be a train target.
    cdf:   (N,) float64 — cumulative Q over items 1..N, or None for uniform Q
    """

    log_q: torch.Tensor
    cdf: torch.Tensor | None

    @property
    def n_items(self) -> int:
        return len(self.log_q) - 1

    def sample(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """(k,) long item ids drawn on the CPU from ``generator`` (the same seed gives the same ids)."""
        if self.cdf is None:
            return torch.randint(1, self.n_items + 1, (k,), generator=generator)
        u = torch.rand(k, generator=generator, dtype=torch.float64) * self.cdf[-1]
        # first index with cdf > u: a zero-probability item (cdf flat there) is never drawn
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.n_items - 1) + 1


def negative_sampler(kind: str, n_items: int, train_seqs: Sequence[np.ndarray] | None = None,
                     device: torch.device | str = "cpu") -> NegativeSampler:
    """``uniform``: Q = 1/N; ``popularity``: Q ∝ the item's count in ``train_seqs`` (the training split)."""
    if kind == "uniform":
        log_q = torch.full((n_items + 1,), -math.log(n_items), dtype=torch.float32)
        log_q[0] = float("-inf")
        return NegativeSampler(log_q.to(device), None)
    if kind == "popularity":
        if train_seqs is None:
            raise ValueError("popularity negatives need the train sequences (their item counts)")
        counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in train_seqs]), minlength=n_items + 1)
        counts = torch.from_numpy(counts[: n_items + 1]).double()
        counts[0] = 0.0
        q = counts / counts.sum()
        return NegativeSampler(q.log().float().to(device), torch.cumsum(q[1:], 0))
    raise ValueError(f"negatives must be one of {NEGATIVE_KINDS}; found {kind!r}")


def sampled_softmax(h: torch.Tensor, E: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                    log_q: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the positive against K shared ``negatives`` (K,), logQ-corrected.

    # METHOD: subtracting log Q(item) from every logit, the positive's included, removes the sampling
    # bias toward the items Q draws often; the sampled softmax then approaches the full one as K grows
    # (Bengio & Senécal 2008; Yi et al. 2019). With
    # all N items as the negatives and uniform Q it *is* the full softmax: the constant log Q cancels and
    # the masked accidental hit leaves each item exactly once (tests/test_ranker_losses.py).
    """
    pos = (h * E[targets]).sum(-1) - log_q[targets]  # (P,)
    neg = h @ E[negatives].T - log_q[negatives]  # (P, K)
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([pos[:, None], neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's β = α (t (1 − 1/α) + 1/α) = 1 − t (1 − α), with the sampling rate α = k / (N − 1).

    Petrov & Macdonald, RecSys 2023 (arXiv:2308.07192), and the formula as their README states it:
    t = 0 gives β = 1 (plain BCE), t = 1 gives β = α (fully calibrated probabilities).
    NOTE: their PyTorch port's ``gbce.py`` computes α = k / (pool_size − 1) with pool_size = N − 1, one
    item off; we follow the paper's α = k / (|I| − 1).
    """
    if not 1 <= n_negatives <= n_items - 1:
        raise ValueError(f"gbce needs 1 ≤ n_negatives ≤ n_items − 1 = {n_items - 1} (α = k/(N−1) ≤ 1); "
                         f"found n_negatives {n_negatives}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gbce calibration t must be in [0, 1]; found {t}")
    alpha = n_negatives / (n_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce(h: torch.Tensor, E: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
         beta: float) -> torch.Tensor:
    """gBCE, −1/(k+1) (log σ(s⁺)^β + Σ_{i ∈ I⁻} log(1 − σ(s_i))), with the k shared ``negatives`` (K,).

    # METHOD: raising the positive's probability to β < 1 undoes the overconfidence that sampling k of
    # N−1 negatives causes (Petrov & Macdonald 2023, who prove it); −log σ(s)^β = β softplus(−s).
    NOTE: gSASRec draws k negatives per position, uniformly, without removing accidental hits; here the
    batch shares one draw of k (each positive still sees k uniform negatives, so α and β are the
    paper's) and a negative equal to the positive is dropped from the sum.
    """
    pos = (h * E[targets]).sum(-1)  # (P,)
    neg = h @ E[negatives].T  # (P, K)
    hit = negatives[None, :] == targets[:, None]
    loss = beta * F.softplus(-pos) + F.softplus(neg).masked_fill(hit, 0.0).sum(1)
    return (loss / (len(negatives) + 1)).mean()
