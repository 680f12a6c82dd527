"""Bias audit (DESIGN.md §5): group gaps in explanation outcomes and popularity concentration of the titles
explanations name, each as a change against the warm start on the same rows. Pure.

**Group gaps.** Users are grouped by gender and by age band (:data:`AGE_BANDS`); users without the
attribute are left out. For each metric (``q``: explanation quality, ``ctr``: simulated click probability,
``toxicity``) each group's mean, standard error and n are reported over the explanations that have a value;
an attribute's gap is max − min of its group means. The policy value of an attribute (:func:`gap_change`)
is ``max over q and CTR of gap(audited system) − gap(warm start)``, on the users both systems explained,
with a stratified paired bootstrap interval (users resampled within their group; docs/audit.md).

**Popularity concentration.** ``popularity[i]`` = item i's number of train interactions. For a multiset of
item occurrences the concentration index (Kakwani 1977) orders the catalogue by popularity and measures how
the occurrences pile up at the popular end: ``C = 2·cov(y, R) / mean(y)`` over catalogue items, ``y`` =
occurrences of the item, ``R`` = its fractional popularity rank (ties share the mean rank). ``C = 0`` when
every item occurs equally, ``(n−1)/n`` when one most-popular item takes everything, negative when the tail is
favoured; when ``R`` ranks the items by ``y`` itself, ``C`` is the Gini coefficient of ``y`` (:func:`gini`).
Because the fractional ranks average 1/2, ``C = 2·mean(R over the occurrences) − 1`` (:func:`popularity_rank`),
which makes a bootstrap over rows a ratio of sums. :func:`mention_concentration_change` compares the
titles two systems name on the same rows.

NOTE: the Gini of the mentioned items' popularity *values* would point the wrong way (explanations
naming only blockbusters have near-equal values and a Gini near 0), hence the concentration index.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .stats import StatsConfig, cluster_bootstrap, percentile_interval

AGE_BANDS = ((0, 25, "<25"), (25, 35, "25-34"), (35, 50, "35-49"), (50, 200, "50+"))
_ORDER = {name: k for k, name in enumerate(["F", "M"] + [band for _, _, band in AGE_BANDS])}  # display order
GAP_METRICS = ("q", "ctr")  # the metrics the gap thresholds are checked on (toxicity has its own)


def age_band(age: float) -> str:
    for lo, hi, name in AGE_BANDS:
        if lo <= age < hi:
            return name
    raise ValueError(f"age {age} outside {AGE_BANDS}")


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def group_stats(values: Sequence[float | None], groups: Sequence[str | None]) -> dict[str, dict]:
    """Per group (None: no group): mean, standard error and n of the non-missing values."""
    acc: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        if g is not None and _present(v):
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


def group_gaps(metrics: Mapping[str, Sequence[float | None]], groups: Sequence[str | None]) -> dict:
    """``{metric: {"groups": {g: {mean, se, n}}, "gap": max − min}}`` for one attribute."""
    out = {}
    for name, values in metrics.items():
        stats = group_stats(values, groups)
        out[name] = {"groups": stats, "gap": gap(stats)}
    return out


def _user_sums(values: Sequence[float | None], user_index: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: the sum and the count of the row values that are present."""
    ok = np.array([_present(v) for v in values], dtype=bool)
    x = np.array([float(v) if k else 0.0 for v, k in zip(values, ok)], dtype=np.float64)
    return (np.bincount(user_index, weights=x, minlength=n_users),
            np.bincount(user_index, weights=ok.astype(np.float64), minlength=n_users))


def _gaps(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """(B,) max − min of the group means under user weights ``(B, U)``; nan with < 2 groups defined."""
    num, den = (weights * sums) @ onehot, (weights * counts) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    defined = np.isfinite(means).sum(axis=1)
    hi = np.where(defined >= 2, np.nanmax(np.where(np.isfinite(means), means, -np.inf), axis=1), np.nan)
    lo = np.where(defined >= 2, np.nanmin(np.where(np.isfinite(means), means, np.inf), axis=1), np.nan)
    return hi - lo


# METHOD: a gap is judged against the warm start's gap on the same users, with a stratified paired bootstrap.
def gap_change(system: Mapping[str, Sequence[float | None]], baseline: Mapping[str, Sequence[float | None]],
               user_index: np.ndarray, user_group: Sequence[str], cfg: StatsConfig,
               metrics: Sequence[str] = GAP_METRICS) -> dict:
    """``max over metrics of gap(system) − gap(baseline)`` with its bootstrap interval.

    ``system[m][r]`` / ``baseline[m][r]``: metric ``m`` of paired row ``r`` (None: missing); ``user_index[r]``:
    the row's user in ``0..U−1``; ``user_group[u]``: that user's group. Users are resampled within their
    group, both systems' rows of a user together. Returns ``{"delta", "ci", "gaps": {m: {"system",
    "baseline"}}, "n_users", "n_boot_finite"}`` (``delta``/``ci`` None when no metric has two groups)."""
    labels = sorted(set(user_group))
    gid = np.array([labels.index(g) for g in user_group], dtype=np.int64)
    n_users = len(user_group)
    onehot = np.eye(len(labels))[gid] if n_users else np.zeros((0, 0))
    sums = {(m, s): _user_sums(vals[m], user_index, n_users) for m in metrics
            for s, vals in (("system", system), ("baseline", baseline))}

    def stat(weights: np.ndarray) -> np.ndarray:
        out = np.full(weights.shape[0], np.nan)
        for m in metrics:
            d = _gaps(weights, *sums[m, "system"], onehot) - _gaps(weights, *sums[m, "baseline"], onehot)
            out = np.fmax(out, d)  # fmax ignores nan: the max over the metrics that are defined
        return out

    ones = np.ones((1, n_users))
    point = float(stat(ones)[0]) if n_users else float("nan")
    gaps: dict[str, dict] = {}
    for m in metrics:
        for s in ("system", "baseline"):
            g = float(_gaps(ones, *sums[m, s], onehot)[0]) if n_users else float("nan")
            gaps.setdefault(m, {})[s] = None if np.isnan(g) else g
    if not np.isfinite(point):
        return {"delta": None, "ci": None, "gaps": gaps, "n_users": n_users, "n_boot_finite": 0}
    boots, finite = cluster_bootstrap(stat, n_users, cfg, strata=gid)
    ci = percentile_interval(boots, cfg.level)
    return {"delta": point, "ci": None if ci is None else list(ci), "gaps": gaps, "n_users": n_users,
            "n_boot_finite": finite}


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


def popularity_rank(popularity: np.ndarray) -> np.ndarray:
    """Each item id's fractional popularity rank among the catalogue (entry 0, the padding id: nan). The
    concentration index of occurrences ``ids`` is ``2·mean(rank[ids]) − 1``."""
    out = np.full(popularity.size, np.nan)
    out[1:] = fractional_rank(np.asarray(popularity[1:], dtype=np.float64))
    return out


def popularity_concentration(item_ids: Sequence[int], popularity: np.ndarray) -> dict:
    """Concentration index of the occurrences ``item_ids`` along ``popularity`` (indexed by item id, entry 0
    the padding id and excluded), with the occurrences' mean popularity and count."""
    ids = np.asarray(item_ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=popularity.size)[1:]
    return {"gini": concentration_index(counts, popularity[1:]) if ids.size else None,
            "mean_popularity": float(popularity[ids].mean()) if ids.size else None, "n": int(ids.size)}


# METHOD: like with like: the titles each system chose to name on the same rows, not mentions vs slates.
def mention_concentration_change(system: Sequence[Sequence[int]], baseline: Sequence[Sequence[int]],
                                 user_index: np.ndarray, n_users: int, popularity: np.ndarray,
                                 cfg: StatsConfig) -> dict:
    """``C(system's mentions) − C(baseline's mentions)`` over paired rows, with a paired bootstrap interval
    over users. ``system[r]`` / ``baseline[r]``: the item ids each system's text names on row ``r``.
    Returns ``{"gini_delta", "ci", "system", "baseline"}`` (the last two: :func:`popularity_concentration`)."""
    rank = popularity_rank(popularity)
    per_user = {}
    for name, mentions in (("system", system), ("baseline", baseline)):
        s = np.array([rank[list(m)].sum() if len(m) else 0.0 for m in mentions], dtype=np.float64)
        c = np.array([len(m) for m in mentions], dtype=np.float64)
        per_user[name] = (np.bincount(user_index, weights=s, minlength=n_users),
                          np.bincount(user_index, weights=c, minlength=n_users))

    def stat(weights: np.ndarray) -> np.ndarray:
        out = []
        for name in ("system", "baseline"):
            s, c = weights @ per_user[name][0], weights @ per_user[name][1]
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(c > 0, 2.0 * s / np.where(c > 0, c, 1.0) - 1.0, np.nan))
        return out[0] - out[1]

    flat = {name: [int(i) for m in mentions for i in m] for name, mentions in (("system", system),
                                                                              ("baseline", baseline))}
    out = {"system": popularity_concentration(flat["system"], popularity),
           "baseline": popularity_concentration(flat["baseline"], popularity)}
    point = float(stat(np.ones((1, n_users)))[0]) if n_users else float("nan")
    if not np.isfinite(point):
        return {"gini_delta": None, "ci": None, "n_boot_finite": 0, **out}
    boots, finite = cluster_bootstrap(stat, n_users, cfg)
    ci = percentile_interval(boots, cfg.level)
    return {"gini_delta": point, "ci": None if ci is None else list(ci), "n_boot_finite": finite, **out}
