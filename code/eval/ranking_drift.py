"""How far a ranking moved: per-user top-k overlap, Kendall τ-b, largest score change, and paired
standard errors of per-user metric differences (DESIGN.md §5). Pure tensor functions, no I/O.

All functions take per-user rows (U, …) and return per-user values, so callers can average, bootstrap or
pair them. On ML-100K (943 test users) a 1% NDCG change is inside the noise; top-k overlap and Kendall τ
are the sensitive drift measures, and every mean difference is reported with its paired SE.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def topk_from_scores(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Top-``k`` item ids (U, k), best first; ``exclude`` (U, N+1) bool masks seen items; column 0 (padding)
    never appears."""
    s = scores.clone()
    s[:, 0] = -torch.inf
    if exclude is not None:
        s = s.masked_fill(exclude, -torch.inf)
    return s.topk(k, dim=1).indices


def topk_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-user share of ``a``'s top-k items (U, k) that are also in ``b``'s (U, k), order ignored: |A∩B|/k."""
    hit = (a.unsqueeze(2) == b.unsqueeze(1)).any(2)
    return hit.double().mean(1)


def kendall_tau_union(scores_a: torch.Tensor, scores_b: torch.Tensor, top_a: torch.Tensor,
                      top_b: torch.Tensor) -> torch.Tensor:
    """Per-user Kendall τ-b between two rankings of the *union* of the two top-k lists (U,).

    Variant: the candidate set of user u is ``top_a[u] ∪ top_b[u]`` (k to 2k items); both rankings are
    the orders that ``scores_a`` and ``scores_b`` (U, N+1) give these items, so an item that fell out of a
    list still counts with its new position. τ-b (Kendall, 1945) corrects for ties:
    ``τ_b = Σ_{i<j} sgn(a_i−a_j) sgn(b_i−b_j) / sqrt(Σ sgn(a_i−a_j)² · Σ sgn(b_i−b_j)²)``;
    1 = same order, −1 = reversed. Equals scipy.stats.kendalltau(variant='b') on the same items.
    """
    cand = torch.cat([top_a, top_b], dim=1)  # (U, 2k)
    dup = (top_b.unsqueeze(2) == top_a.unsqueeze(1)).any(2)  # b's items already in a's list
    valid = torch.cat([torch.ones_like(dup), ~dup], dim=1)  # each item counted once
    sa = scores_a.gather(1, cand).double()
    sb = scores_b.gather(1, cand).double()
    da = torch.sign(sa.unsqueeze(2) - sa.unsqueeze(1))
    db = torch.sign(sb.unsqueeze(2) - sb.unsqueeze(1))
    n = cand.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=cand.device), diagonal=1)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1) & upper
    pair = pair.double()
    num = (da * db * pair).sum((1, 2))
    den = torch.sqrt((da.abs() * pair).sum((1, 2)) * (db.abs() * pair).sum((1, 2)))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))


def max_score_change(scores_a: torch.Tensor, scores_b: torch.Tensor,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per-user largest ``|s_b(u,i) − s_a(u,i)|`` over items (U,), padding column and ``exclude`` ignored."""
    d = (scores_b - scores_a).abs().double()
    d[:, 0] = 0.0
    if exclude is not None:
        d = d.masked_fill(exclude, 0.0)
    return d.max(1).values


class PairedDiff(NamedTuple):
    mean_a: float
    mean_b: float
    diff: float  # mean(b − a)
    se: float  # std(b − a, ddof=1) / sqrt(n)
    n: int

    @property
    def rel(self) -> float:
        """Relative change ``diff / mean_a`` (nan when ``mean_a`` is 0)."""
        return self.diff / self.mean_a if self.mean_a else math.nan

    @property
    def z(self) -> float:
        return self.diff / self.se if self.se > 0 else (0.0 if self.diff == 0 else math.inf)


def paired_diff(a: torch.Tensor, b: torch.Tensor) -> PairedDiff:
    """Mean of a per-user metric under ``a`` and ``b`` (same users, same order) and the paired standard
    error of the mean difference: ``se = std(b − a, ddof=1) / sqrt(n)``."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired_diff needs two per-user vectors of equal length, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    diff = b - a
    n = diff.numel()
    se = diff.std(unbiased=True).item() / math.sqrt(n) if n > 1 else math.nan
    return PairedDiff(a.mean().item(), b.mean().item(), diff.mean().item(), se, n)


class DriftReport(NamedTuple):
    """A modified item store against the original, on one split (protocol: full ranking, seen items masked).

    ndcg/hr: PairedDiff of per-user NDCG@k / HR@k (original → modified); overlap, kendall: per-user (U,)
    top-k overlap and Kendall τ-b on the union of the top-k lists; max_score_change: per-user (U,) largest
    |Δs| over all items; score_scale: mean over users of the std of their original scores (to read the
    score change against).
    """

    ndcg: PairedDiff
    hr: PairedDiff
    overlap: torch.Tensor
    kendall: torch.Tensor
    max_score_change: torch.Tensor
    score_scale: float


@torch.no_grad()
def drift_report(model, data, split: str, table: torch.Tensor, *, k: int = 10, reference: dict | None = None,
                 batch_size: int = 1024) -> DriftReport:
    """Rank ``split`` with ``model`` reading item store ``table`` and compare with the original store.

    ``reference`` (from :func:`reference_scores`) caches the original ranking when many tables are compared.
    """
    from ..ranker import metrics as M
    from ..ranker.data import eval_inputs
    from ..ranker.evaluate import all_scores

    ref = reference or reference_scores(model, data, split, k=k, batch_size=batch_size)
    s1 = all_scores(model, data, split, item_table=table, batch_size=batch_size)
    inputs = eval_inputs(data, split, model.cfg.max_len)
    ranks1 = M.target_ranks(s1, inputs.targets, inputs.seen)
    top1 = topk_from_scores(s1, k, inputs.seen)
    s0 = ref["scores"]
    return DriftReport(paired_diff(ref["ndcg"], M.ndcg_at_k(ranks1, k)),
                       paired_diff(ref["hr"], M.hr_at_k(ranks1, k)),
                       topk_overlap(ref["top"], top1), kendall_tau_union(s0, s1, ref["top"], top1),
                       max_score_change(s0, s1), ref["scale"])


@torch.no_grad()
def reference_scores(model, data, split: str, *, k: int = 10, batch_size: int = 1024,
                     item_table: torch.Tensor | None = None) -> dict:
    """The original store's scores, top-k, per-user NDCG@k/HR@k (full ranking, seen masked) on ``split``.

    ``item_table``: the store to score with (default: the model's own table as it is now). Pass ``E0``
    explicitly when the model's table may already have moved (a resumed run)."""
    from ..ranker import metrics as M
    from ..ranker.data import eval_inputs
    from ..ranker.evaluate import all_scores

    s0 = all_scores(model, data, split, item_table=item_table, batch_size=batch_size)
    inputs = eval_inputs(data, split, model.cfg.max_len)
    ranks0 = M.target_ranks(s0, inputs.targets, inputs.seen)
    finite = s0[:, 1:]
    return {"scores": s0, "top": topk_from_scores(s0, k, inputs.seen), "ndcg": M.ndcg_at_k(ranks0, k),
            "hr": M.hr_at_k(ranks0, k), "scale": float(finite.std(1).mean())}
