"""How far a ranking moved: per-user top-k overlap, Kendall τ-b, largest score change, and paired
standard errors of per-user metric differences (DESIGN.md §5). Pure tensor functions, no I/O.

All functions take per-user rows (U, …) and return per-user values, so callers can average, bootstrap or
pair them; :func:`reference_scores` and :func:`drift_report` feed them one user batch at a time from the
model (nothing users × items is held; DESIGN.md §7). On ML-100K (943 test users) a 1% NDCG change is
inside the noise; top-k overlap and Kendall τ are the sensitive drift measures, and every mean difference
is reported with its paired SE.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch


def topk_from_scores(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Top-``k`` item ids (U, k), best first; ``exclude`` (U, N+1) bool masks seen items; column 0 (padding)
    never appears."""
    s = scores.clone() if exclude is None else scores.masked_fill(exclude, -torch.inf)  # one (U, N+1) copy
    s[:, 0] = -torch.inf
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
    d = (scores_b - scores_a).abs_()
    d[:, 0] = 0.0
    if exclude is not None:
        d = d.masked_fill_(exclude, 0.0)
    return d.max(1).values.double()  # the max before the (exact) cast: no float64 copy of the whole rows


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

    ndcg/hr: PairedDiff of per-user NDCG@k / HR@k (original → modified); overlap, kendall: per-user (n,)
    top-k overlap and Kendall τ-b on the union of the top-k lists; max_score_change: per-user (n,) largest
    |Δs| over all items; score_scale: mean over users of the std of their original scores (to read the
    score change against). n users: the reference's (all, or its seeded sample ``users``).
    """

    ndcg: PairedDiff
    hr: PairedDiff
    overlap: torch.Tensor
    kendall: torch.Tensor
    max_score_change: torch.Tensor
    score_scale: float


@torch.no_grad()
def drift_report(model, data, split: str, table: torch.Tensor, *, k: int = 10, reference: dict | None = None,
                 batch_size: int = 1024, users: Sequence[int] | torch.Tensor | None = None) -> DriftReport:
    """Rank ``split`` with ``model`` reading item store ``table`` and compare with the original store.

    ``reference`` (from :func:`reference_scores`) caches the original ranking when many tables are compared;
    without it the original store is the model's own table as it is now. ``users``: 0-based user rows (a
    fixed sample; default: the reference's, else all). Batch by batch, nothing users × items is held: each
    batch is scored twice, with the reference's table ``E0`` and with ``table`` (the Kendall τ and the score
    change need both scores of every candidate), so memory is O(n·k + N·d + batch_size·N).
    """
    from ..ranker import metrics as M
    from ..ranker.evaluate import score_split

    if reference is None:
        reference = reference_scores(model, data, split, k=k, batch_size=batch_size, users=users)
    elif users is not None and not torch.equal(torch.as_tensor(users, dtype=torch.long).reshape(-1),
                                               reference["users"]):
        raise ValueError("drift_report(users=) differs from the users the reference was computed on; pass "
                         "reference_scores(..., users=) the same sample (or omit users=)")
    if reference["split"] != split or reference["top"].shape[1] != k:
        raise ValueError(f"the reference ranks {reference['split']!r} with top-{reference['top'].shape[1]} lists; "
                         f"drift_report asked for {split!r}, k={k}")
    inputs = reference["inputs"]
    top0 = reference["top"]
    ndcg1, hr1, overlap, kendall, change = [], [], [], [], []
    start = 0
    for rows, (s0, s1) in score_split(model, inputs, (reference["table"], table), users=reference["users"],
                                      batch_size=batch_size):
        seen = inputs.seen.mask(rows)
        t0 = top0[start:start + len(rows)]
        start += len(rows)
        ranks1 = M.target_ranks(s1, inputs.targets[rows], seen)
        top1 = topk_from_scores(s1, k, seen)
        ndcg1.append(M.ndcg_at_k(ranks1, k))
        hr1.append(M.hr_at_k(ranks1, k))
        overlap.append(topk_overlap(t0, top1))
        kendall.append(kendall_tau_union(s0, s1, t0, top1))
        change.append(max_score_change(s0, s1))
    return DriftReport(paired_diff(reference["ndcg"], torch.cat(ndcg1)), paired_diff(reference["hr"], torch.cat(hr1)),
                       torch.cat(overlap), torch.cat(kendall), torch.cat(change), reference["scale"])


@torch.no_grad()
def reference_scores(model, data, split: str, *, k: int = 10, batch_size: int = 1024,
                     item_table: torch.Tensor | None = None,
                     users: Sequence[int] | torch.Tensor | None = None) -> dict:
    """The original store's ranking of ``split`` (full ranking, seen masked), O(n·k + N·d), batch by batch.

    Returns ``{"split", "inputs", "table", "users", "top", "ndcg", "hr", "scale"}``: the split's
    :class:`~shielded_recrl.ranker.data.EvalInputs` (built once, reused by every :func:`drift_report`), a
    snapshot of the store scored with (``table``, (N+1, d): :func:`drift_report` rescores each batch with
    it instead of keeping U × (N+1) scores), the (n,) user rows ranked (``users``), their top-k (n, k),
    per-user NDCG@k and HR@k (n,), and ``scale``, the mean over users of the std of their scores over
    items 1..N. ``item_table``: the store to score with (default: the model's own table as it
    is now). Pass ``E0`` explicitly when the model's table may already have moved (a resumed run).
    ``users``: 0-based user rows, a fixed sample (e.g. ``ranker.evaluate.sample_users``; default all)."""
    from ..ranker import metrics as M
    from ..ranker.data import eval_inputs
    from ..ranker.evaluate import score_split, user_rows

    table0 = (model.item_table if item_table is None else item_table).detach().clone()
    inputs = eval_inputs(data, split, model.cfg.max_len)
    rows_all = user_rows(len(inputs.targets), users)
    top, ndcg, hr, std = [], [], [], []
    for rows, (s0,) in score_split(model, inputs, (table0,), users=rows_all, batch_size=batch_size):
        seen = inputs.seen.mask(rows)
        ranks0 = M.target_ranks(s0, inputs.targets[rows], seen)
        top.append(topk_from_scores(s0, k, seen))
        ndcg.append(M.ndcg_at_k(ranks0, k))
        hr.append(M.hr_at_k(ranks0, k))
        std.append(s0[:, 1:].std(1))
    return {"split": split, "inputs": inputs, "table": table0, "users": rows_all, "top": torch.cat(top),
            "ndcg": torch.cat(ndcg), "hr": torch.cat(hr), "scale": float(torch.cat(std).mean())}
