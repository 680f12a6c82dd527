"""Paired comparisons of explanation systems over the same users (DESIGN.md §5). Pure: no I/O.

Every evaluated user explains the same (user, item) pairs under every system, so a difference between two
systems is a mean of per-user differences: it is reported with its paired standard error, a 95%
confidence interval and a two-sided p-value (Student's t with n − 1 degrees of freedom on the per-user
differences — the paired t-test). Rates (hallucination, copy, …) are means of per-explanation 0/1 values,
compared the same way (for 0/1 values the paired t-test is close to McNemar's test at these sizes).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np

# per-explanation values that evaluation records, with the set (test_item | slate) each is compared on
FIELDS = {
    "ctr": "slate",              # the simulator's expected click probability
    "q": "slate",                # explanation quality (docs/simulator.md)
    "faith1": "slate",           # faithfulness@1 to the ranker (docs/faithfulness.md)
    "faith_graded": "slate",     # the graded faithfulness score in [−1, 1]
    "hallucinated": "slate",     # names a catalogue title outside what the prompt showed ∪ the item
    "prompt_copy": "slate",      # copies prompt catalogue text beyond the threshold
    "self_reference": "slate",   # gives the recommended item as its own reason
    "unfinished": "slate",       # ends mid-sentence
    "judge_item": "slate",       # the held-out judge's relevance to the item (a second encoder)
}


class Comparison(NamedTuple):
    """``system − baseline`` over ``n`` paired users."""

    mean_system: float
    mean_baseline: float
    diff: float
    se: float
    ci_low: float
    ci_high: float
    p: float
    n: int

    def as_dict(self) -> dict:
        return self._asdict()


def paired(system: Sequence[float], baseline: Sequence[float]) -> Comparison:
    """Paired mean difference ``system − baseline`` with its SE, 95% t interval and two-sided p-value."""
    from scipy import stats

    a, b = np.asarray(system, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired needs two non-empty per-user vectors of equal length; found {a.shape}, {b.shape}")
    d = a - b
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return Comparison(float(a.mean()), float(b.mean()), mean, math.nan, math.nan, math.nan, math.nan, n)
    se = float(d.std(ddof=1) / math.sqrt(n))
    t = stats.t.ppf(0.975, n - 1)
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return Comparison(float(a.mean()), float(b.mean()), mean, se, mean - t * se, mean + t * se, p, n)


def compare_systems(records: Sequence[Mapping], baseline: str = "warm_start",
                    fields: Mapping[str, str] = FIELDS) -> dict[str, dict[str, dict]]:
    """``{system: {field: Comparison as dict}}`` against ``baseline`` for every other system in ``records``
    (rows of ``explanations.jsonl``). Pairs are matched on (user, set); a field missing from a system's
    rows is skipped; users present in only one of the two systems are an error."""
    by = {}
    for r in records:
        by.setdefault(r["system"], {})[(int(r["user_id"]), r["set"])] = r
    if baseline not in by:
        return {}
    out: dict[str, dict[str, dict]] = {}
    for system, rows in by.items():
        if system == baseline:
            continue
        base = by[baseline]
        out[system] = {}
        for field, which in fields.items():
            keys = sorted(k for k in rows if k[1] == which)
            if not keys or any(rows[k].get(field) is None for k in keys):
                continue
            missing = [k for k in keys if k not in base]
            if missing:
                raise ValueError(f"{system} and {baseline} must explain the same users; {baseline} lacks {missing[:3]}")
            if any(base[k].get(field) is None for k in keys):
                continue
            c = paired([float(rows[k][field]) for k in keys], [float(base[k][field]) for k in keys])
            out[system][field] = c.as_dict()
    return out
