"""Ranking metrics for next-item prediction (pure tensor functions, no I/O).

Protocols (DESIGN.md §5; every reported number names its protocol):

- ``full_masked``   — rank the held-out item against *all* items, the user's already-seen items masked
  (the primary protocol).
- ``full_unmasked`` — all items, nothing masked (what RecBole reports for sequential models).
- ``sampled100``    — the SASRec paper's protocol (Kang & McAuley, 2018, §IV-B): rank the held-out item
  among 100 negatives drawn uniformly from the items the user never interacted with.

Ranks are 0-based: rank 0 means the true item scored highest. Padding column 0 is never a candidate.

Tie rule: a candidate counts against the target only when its score is *strictly greater*, so tied
items do not push the target down (the optimistic rule, as in most re-implementations). A model that
outputs constant scores would therefore look perfect; rankers with real-valued scores almost never tie,
and the popularity baseline breaks its count ties explicitly (see ``baselines.py``).
"""

from __future__ import annotations

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank (B,) of ``targets`` (B,) in ``scores`` (B, N+1).

    ``exclude`` (B, N+1) bool marks candidates that do not compete (e.g. seen items); the target itself
    is never excluded (it cannot beat itself) and column 0 (padding) is always excluded.
    """
    target_score = scores.gather(1, targets.view(-1, 1))
    beats = scores > target_score
    beats[:, 0] = False
    if exclude is not None:
        beats &= ~exclude
    return beats.sum(1)


def ndcg_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user NDCG@k (B,) for one relevant item: 1 / log2(rank + 2) if rank < k else 0."""
    r = ranks.to(torch.float64)
    return torch.where(ranks < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))


def hr_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user hit rate @k (B,): 1.0 if the target is in the top k."""
    return (ranks < k).to(torch.float64)


def sample_negatives(allowed: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` distinct item ids (B, n) uniformly from the True entries of ``allowed`` (B, N+1).

    Vectorised "random keys": each allowed item gets a uniform key, the n smallest keys win, which is a
    uniform sample without replacement. Deterministic for a given generator state and batch.
    """
    if int(allowed.sum(1).min()) < n:
        raise ValueError(f"a user has fewer than {n} non-interacted items to sample negatives from")
    keys = torch.rand(allowed.shape, generator=generator, device=allowed.device)
    keys = keys.masked_fill(~allowed, 2.0)
    return keys.topk(n, dim=1, largest=False).indices


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, interacted: torch.Tensor, generator: torch.Generator,
                  n_neg: int = 100) -> torch.Tensor:
    """0-based rank (B,) of the target among ``n_neg`` sampled negatives (the paper's protocol).

    ``interacted`` (B, N+1) bool: every item of the user's full history (train, valid and test); these
    and the padding column are never drawn as negatives.
    """
    allowed = ~interacted.clone()
    allowed[:, 0] = False
    allowed.scatter_(1, targets.view(-1, 1), False)
    negs = sample_negatives(allowed, n_neg, generator)
    target_score = scores.gather(1, targets.view(-1, 1))
    return (scores.gather(1, negs) > target_score).sum(1)


def summarise(ranks: torch.Tensor, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Mean NDCG@k and HR@k over users, for each k."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranks, k).mean())
        out[f"hr@{k}"] = float(hr_at_k(ranks, k).mean())
    return out
