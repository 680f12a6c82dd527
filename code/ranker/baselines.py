"""Non-personalised reference rankers, evaluated through the same code path as SASRec.

- most-popular: item score = number of train interactions; count ties are broken by a fixed,
  seeded permutation. ``metrics.py`` would now average over count ties (they count ½); the fixed
  tie-break is kept so the baseline is one total order (its numbers are one draw of that average, and
  stay what earlier runs reported).
- random: uniform random scores from a seeded generator.
"""

from __future__ import annotations

import numpy as np
import torch

from .evaluate import Scorer

_TIEBREAK_OFFSET = 2_000_003


def popularity_scorer(train_seqs, n_items: int, seed: int = 0) -> Scorer:
    counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in train_seqs]), minlength=n_items + 1)
    counts = torch.from_numpy(counts[: n_items + 1]).double()
    g = torch.Generator().manual_seed(seed + _TIEBREAK_OFFSET)  # not the negatives' stream (see below)
    tiebreak = torch.rand(n_items + 1, generator=g, dtype=torch.float64) * 0.5  # < 1: only breaks ties
    item_scores = counts + tiebreak

    def score(hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return item_scores.unsqueeze(0).expand(len(rows), -1)

    return score


# Offset so the random scores never share a stream with the sampled-100 negatives, which evaluation
# draws from a generator seeded with the same ``seed``: identical streams would give every target the
# highest score among its negatives (sampled-100 NDCG@10 ≈ 0.9 for a random ranker).
_RANDOM_SCORES_OFFSET = 1_000_003


def random_scorer(n_items: int, seed: int = 0) -> Scorer:
    g = torch.Generator().manual_seed(seed + _RANDOM_SCORES_OFFSET)

    def score(hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(rows), n_items + 1, generator=g)

    return score
