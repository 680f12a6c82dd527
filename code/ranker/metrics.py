"""Ranking metrics for next-item prediction (pure tensor functions, no I/O).

Protocols (DESIGN.md §5; every reported number names its protocol):

- ``full_masked``   — rank the held-out item against *all* items, the user's already-seen items masked
  (the primary protocol).
- ``full_unmasked`` — all items, nothing masked (what RecBole reports for sequential models).
- ``sampled100``    — the SASRec paper's protocol (Kang & McAuley, 2018, §IV-B): rank the held-out item
  among 100 negatives drawn uniformly from the items the user never interacted with.

Ranks are 0-based: rank 0 means the true item scored highest. Padding column 0 is never a candidate.

Tie rule: a competitor whose score equals the target's counts ½, the rank under random tie-breaking.
With ``g`` competitors strictly greater and ``t`` tied, the target's position is uniform on ``g..g+t``
and NDCG@k / HR@k are the exact means over those ``t + 1`` positions (:class:`Ranks` carries ``g`` and
``t``; its ``expected()`` is ``g + t/2``). A model that outputs constant scores therefore scores what
a random ranker scores, not 1.0. Without ties the numbers are the strict rule's, bit for bit.
NOTE: this departs from the optimistic rule of many re-implementations (count only strictly greater
scores), under which constant or saturated scores look perfect.

Non-finite scores are refused (``ValueError``): ``NaN > x`` is False, so a NaN target would otherwise
rank first and a diverged model or item store would report a better NDCG.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Ranks(NamedTuple):
    """Where each target lands among its competitors; both (B,) long.

    ``greater``: competitors scoring strictly higher than the target (the target's best position);
    ``ties``: competitors scoring exactly the same (excluding the target itself, padding and excluded
    items). Under random tie-breaking the 0-based position is uniform on ``greater..greater+ties``.
    """

    greater: torch.Tensor
    ties: torch.Tensor

    def expected(self) -> torch.Tensor:
        """Expected 0-based rank (B,) float64 under random tie-breaking: ``greater + ties / 2``."""
        return self.greater.to(torch.float64) + self.ties.to(torch.float64) / 2


def check_finite(scores: torch.Tensor, live: torch.Tensor | None = None, *, first_row: int = 0,
                 row_ids: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` when a score that takes part in ranking is NaN or ±inf.

    ``live`` (B, N+1) bool marks the scores that take part (default: every item; padding column 0 never
    does, so callers may set it to -inf). ``first_row`` numbers the rows in the message (a batch offset);
    ``row_ids`` (B,), when given, names them instead (e.g. the user rows of a sample).
    """
    bad = ~torch.isfinite(scores)
    bad[:, 0] = False
    if live is not None:
        bad &= live
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    bad_rows = bad.any(1).nonzero().flatten()
    n_nan = int((bad & torch.isnan(scores)).sum())
    first = first_row + int(bad_rows[0]) if row_ids is None else int(row_ids[bad_rows[0]])
    raise ValueError(
        f"scores contain {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} ±inf) in {len(bad_rows)} of "
        f"{len(scores)} rows (first: row {first}): a diverged model or item store; "
        "refusing to rank (NaN compares False, so it would rank first). Check the training loss and the "
        "item table for NaN/inf.")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> Ranks:
    """:class:`Ranks` of ``targets`` (B,) in ``scores`` (B, N+1), ties counted apart from wins.

    ``exclude`` (B, N+1) bool marks candidates that do not compete (e.g. seen items; they may be -inf);
    the target itself is never excluded (it cannot beat or tie itself) and column 0 (padding) is always
    excluded. Raises ``ValueError`` when the target or a competitor has a non-finite score.
    """
    competes = torch.ones_like(scores, dtype=torch.bool) if exclude is None else ~exclude
    competes[:, 0] = False
    competes.scatter_(1, targets.view(-1, 1), False)
    check_finite(scores, competes.scatter(1, targets.view(-1, 1), True))
    target_score = scores.gather(1, targets.view(-1, 1))
    greater = (scores > target_score) & competes
    tied = (scores == target_score) & competes
    return Ranks(greater.sum(1), tied.sum(1))


def _greater_and_ties(ranks: Ranks | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A plain tensor holds exact 0-based positions (no ties); fractional values would be expected ranks,
    whose metric is not the metric of the expected rank, so they are refused."""
    if isinstance(ranks, Ranks):
        return ranks.greater, ranks.ties
    if torch.is_floating_point(ranks) and bool((ranks != ranks.floor()).any()):
        raise ValueError("ranks hold fractional values (expected ranks under ties?); pass the Ranks from "
                         "target_ranks/sampled_ranks so that ties are averaged exactly")
    return ranks, None


def ndcg_at_k(ranks: Ranks | torch.Tensor, k: int) -> torch.Tensor:
    """Per-user NDCG@k (B,) for one relevant item: 1 / log2(rank + 2) if rank < k else 0, averaged over
    the positions ``greater..greater+ties`` when ``ranks`` is a :class:`Ranks` with ties."""
    greater, ties = _greater_and_ties(ranks)
    r = greater.to(torch.float64)
    out = torch.where(greater < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))
    if ties is None or not bool(ties.any()):
        return out  # the strict rule's expression, so untied numbers stay bit-identical
    tied = ties > 0
    offset = torch.arange(k, device=greater.device)
    pos = greater[tied].unsqueeze(1) + offset  # (T, k): only the first k positions can be < k
    inside = (offset <= ties[tied].unsqueeze(1)) & (pos < k)
    gain = torch.where(inside, 1.0 / torch.log2(pos.to(torch.float64) + 2.0), 0.0)
    out[tied] = gain.sum(1) / (ties[tied] + 1).to(torch.float64)
    return out


def hr_at_k(ranks: Ranks | torch.Tensor, k: int) -> torch.Tensor:
    """Per-user hit rate @k (B,): 1.0 if the target is in the top k; with ties, the share of the positions
    ``greater..greater+ties`` that are < k."""
    greater, ties = _greater_and_ties(ranks)
    if ties is None:
        return (greater < k).to(torch.float64)
    n_pos = (ties + 1).to(torch.float64)
    return (k - greater).clamp(min=0).to(torch.float64).minimum(n_pos) / n_pos


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
                  n_neg: int = 100) -> Ranks:
    """:class:`Ranks` of the target among ``n_neg`` sampled negatives (the paper's protocol).

    ``interacted`` (B, N+1) bool: every item of the user's full history (train, valid and test); these
    and the padding column are never drawn as negatives. Every item that could be drawn, and the target,
    must have a finite score (checked before sampling, so the outcome does not depend on the draw).
    """
    allowed = ~interacted.clone()
    allowed[:, 0] = False
    allowed.scatter_(1, targets.view(-1, 1), False)
    check_finite(scores, allowed.scatter(1, targets.view(-1, 1), True))
    negs = sample_negatives(allowed, n_neg, generator)
    target_score = scores.gather(1, targets.view(-1, 1))
    neg_scores = scores.gather(1, negs)
    return Ranks((neg_scores > target_score).sum(1), (neg_scores == target_score).sum(1))


def summarise(ranks: Ranks | torch.Tensor, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Mean NDCG@k and HR@k over users, for each k (ties averaged as in :func:`ndcg_at_k`)."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranks, k).mean())
        out[f"hr@{k}"] = float(hr_at_k(ranks, k).mean())
    return out
