"""Interval estimates for the audit's decisions (docs/audit.md, "How a check decides"). Pure: no I/O.

- :func:`cluster_bootstrap`: a paired percentile bootstrap whose resampling unit is the *user*: a user's
  rows (test-item and slate explanation) and both systems' texts for them move together, so the interval
  keeps the pairing and the within-user correlation (Efron & Tibshirani 1993; Field & Welsh 2007 for
  cluster resampling). ``strata`` resamples within each stratum (a user group), keeping group sizes fixed.
- :func:`clopper_pearson`: the exact binomial interval of a rate (Clopper & Pearson 1934).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    n_boot: int = 2000  # resamples; between seeds the endpoints move by ~3% of the interval's width (planted rows)
    seed: int = 0
    level: float = 0.95  # two-sided interval level


def cluster_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n_clusters: int, cfg: StatsConfig,
                      strata: Sequence[int] | None = None) -> tuple[np.ndarray, int]:
    """(the statistic on ``cfg.n_boot`` resamples of the clusters, the count of finite ones).

    ``statistic(counts)`` gets a ``(B, n_clusters)`` array: how often each cluster is drawn in each resample
    (the full sample is one row of ones), and returns ``(B,)`` values (``nan`` where undefined, e.g. a
    resample with no mention). ``strata``: a stratum id per cluster; each stratum is resampled on its own."""
    rng = np.random.default_rng(cfg.seed)
    counts = np.zeros((cfg.n_boot, n_clusters), dtype=np.float64)
    groups = [np.arange(n_clusters)] if strata is None else \
        [np.flatnonzero(np.asarray(strata) == s) for s in np.unique(np.asarray(strata))]
    for members in groups:
        # drawing m clusters with replacement = one multinomial(m, uniform) count vector per resample
        counts[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size),
                                             size=cfg.n_boot)
    values = np.asarray(statistic(counts), dtype=np.float64)
    return values, int(np.isfinite(values).sum())


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    """The central ``level`` percentile interval of the finite ``values``; None when fewer than half of them
    are finite (too few resamples define the statistic for an interval to mean anything)."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    if ok.size == 0 or ok.size < 0.5 * v.size:
        return None
    a = (1.0 - level) / 2.0
    return float(np.quantile(ok, a)), float(np.quantile(ok, 1.0 - a))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact two-sided ``level`` interval of a binomial rate with ``k`` successes in ``n`` trials."""
    from scipy import stats

    if n <= 0:
        return None
    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi
