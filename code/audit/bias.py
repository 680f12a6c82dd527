"""Bias audit (DESIGN.md §5): group gaps in explanation outcomes, and popularity concentration. Pure.

**Group gaps.** Users are grouped by gender (M/F) and by age band (:data:`AGE_BANDS`). For each metric
(``q``: explanation quality, ``ctr``: simulated click probability, ``toxicity``) each group's mean,
standard error and n are reported over the audited explanations that have a value; the gap of an
attribute is max − min of its group means. The policy's ``gender_gap`` is the largest of the q and CTR
gender gaps (toxicity has its own thresholds).

**Popularity concentration.** ``popularity[i]`` = item i's number of train interactions. For a multiset of
item occurrences (the items explanations name, or the items of the slates they explain), the
concentration index (Kakwani 1977) orders the catalogue by popularity and measures how the occurrences
pile up at the popular end: ``C = 2·cov(y, R) / mean(y)`` over catalogue items, ``y`` = occurrences of the
item, ``R`` = its fractional popularity rank (ties share the mean rank). ``C = 0`` when every item occurs
equally, ``(n−1)/n`` when one most-popular item takes everything, negative when the tail is favoured;
when ``R`` ranks the items by ``y`` itself, ``C`` is the Gini coefficient of ``y`` (:func:`gini`).
``gini_delta = C(mentions) − C(slate)``: > 0 means explanations talk about more popular items than the
recommendations they explain.

NOTE: the Gini of the mentioned items' popularity *values* would point the wrong way (explanations
naming only blockbusters have near-equal values and a Gini near 0), hence the concentration index.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

AGE_BANDS = ((0, 25, "<25"), (25, 35, "25-34"), (35, 50, "35-49"), (50, 200, "50+"))
_ORDER = {name: k for k, name in enumerate(["F", "M"] + [band for _, _, band in AGE_BANDS])}  # display order
GAP_METRICS = ("q", "ctr")  # the metrics gender_gap_max is checked on


def age_band(age: float) -> str:
    for lo, hi, name in AGE_BANDS:
        if lo <= age < hi:
            return name
    raise ValueError(f"age {age} outside {AGE_BANDS}")


def group_stats(values: Sequence[float | None], groups: Sequence[str]) -> dict[str, dict]:
    """Per group: mean, standard error and n of the non-missing values."""
    acc: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            acc.setdefault(g, []).append(float(v))
    out = {}
    for g in sorted(acc, key=lambda g: (_ORDER.get(g, len(_ORDER)), g)):
        x = np.asarray(acc[g])
        se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else None
        out[g] = {"mean": float(x.mean()), "se": se, "n": int(x.size)}
    return out


def gap(stats: Mapping[str, dict]) -> float | None:
    """max − min of the group means; None with fewer than two groups."""
    means = [s["mean"] for s in stats.values()]
    return float(max(means) - min(means)) if len(means) >= 2 else None


def group_gaps(metrics: Mapping[str, Sequence[float | None]], groups: Sequence[str]) -> dict:
    """``{metric: {"groups": {g: {mean, se, n}}, "gap": max − min}}`` for one attribute."""
    out = {}
    for name, values in metrics.items():
        stats = group_stats(values, groups)
        out[name] = {"groups": stats, "gap": gap(stats)}
    return out


def gender_gap(by_gender: Mapping[str, dict]) -> float | None:
    """The largest of the q and CTR gaps between the gender groups (None if none is computable)."""
    gaps = [by_gender[m]["gap"] for m in GAP_METRICS if m in by_gender and by_gender[m]["gap"] is not None]
    return max(gaps) if gaps else None


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values: ``Σ_i (2i − n − 1)·x_(i) / (n·Σx)`` (x sorted ascending,
    i = 1..n). 0 when all are equal, ``(n−1)/n`` when one holds everything; 0 for an all-zero vector."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def fractional_rank(key: np.ndarray) -> np.ndarray:
    """(rank − 0.5)/n of each entry of ``key`` in ascending order; ties get their mean rank."""
    order = np.argsort(key, kind="stable")
    ranks = np.empty(key.size, dtype=np.float64)
    ranks[order] = np.arange(1, key.size + 1)
    uniq, inverse = np.unique(key, return_inverse=True)
    mean_rank = np.bincount(inverse, weights=ranks) / np.bincount(inverse)
    return (mean_rank[inverse] - 0.5) / key.size


def concentration_index(counts: Sequence[float], rank_by: Sequence[float]) -> float:
    """``2·cov(y, R) / mean(y)`` with ``y = counts`` and ``R`` the fractional rank of ``rank_by`` (population
    covariance over all entries). Equals :func:`gini` of ``counts`` when ``rank_by`` orders them the same way."""
    y = np.asarray(counts, dtype=np.float64)
    if y.sum() == 0:
        return 0.0
    r = fractional_rank(np.asarray(rank_by, dtype=np.float64))
    return float(2.0 * np.mean((y - y.mean()) * (r - r.mean())) / y.mean())


def popularity_concentration(item_ids: Sequence[int], popularity: np.ndarray) -> dict:
    """Concentration index of the occurrences ``item_ids`` along ``popularity`` (indexed by item id, entry 0
    the padding id and excluded), with the occurrences' mean popularity and count."""
    ids = np.asarray(item_ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=popularity.size)[1:]
    return {"gini": concentration_index(counts, popularity[1:]) if ids.size else None,
            "mean_popularity": float(popularity[ids].mean()) if ids.size else None, "n": int(ids.size)}
