"""Paired comparisons of explanation systems over the same users (DESIGN.md §5). Pure: no I/O.

Every evaluated user explains the same (user, item) pairs under every system, so a difference between two
systems is a mean of per-user differences: it is reported with its paired standard error, a 95%
confidence interval and a two-sided p-value (Student's t with n − 1 degrees of freedom on the per-user
differences — the paired t-test). Rates (hallucination, copy, …) are means of per-explanation 0/1 values,
compared the same way (for 0/1 values the paired t-test is close to McNemar's test at these sizes).

Corpus-level text metrics (corpus BLEU, distinct-n, genre precision: not means of per-user values) are
compared by a paired bootstrap over users instead (:func:`bootstrap_text`; Koehn 2004, "Statistical
Significance Tests for Machine Translation Evaluation", EMNLP, paired bootstrap resampling): B seeded
resamples of the users, with replacement, the *same* users for both systems in each resample; the
interval is the 2.5–97.5 percentile of the B resampled differences, the point difference is the one on
the full sample. Each resample recomputes the metrics from per-explanation sufficient statistics
(:func:`~shielded_recrl.eval.text_metrics.stats_metrics`), exactly, without re-scoring any text.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ..common.seeding import numpy_rng
from . import text_metrics as tm

# per-explanation values that evaluation records, with the set (test_item | slate) each is compared on
FIELDS = {
    "ctr": "slate",              # the simulator's expected click probability
    "q": "slate",                # explanation quality (docs/simulator.md)
    "faith1": "slate",           # faithfulness@1 to the ranker (docs/faithfulness.md)
    "faith_graded": "slate",     # the graded faithfulness score in [−1, 1]
    "names_no_history": "slate",  # names none of the history titles the prompt showed (faithfulness@1 0)
    "names_latest": "slate",     # names the most recent shown item (the ranker's top contributor in ~half the pairs)
    "hallucinated": "slate",     # names a catalogue title outside what the prompt showed ∪ the item
    "invented_title": "slate",   # names a title-like span that is no catalogue title ("The Black Lagoons")
    "prompt_copy": "slate",      # copies prompt catalogue text beyond the threshold
    "self_reference": "slate",   # gives the recommended item as its own reason
    "unfinished": "slate",       # ends mid-sentence
    "unnamed_item": "slate",     # never names the recommended item
    "judge": "slate",            # the held-out judge: 0.6 · judge_item + 0.4 · judge_history (eval/judge.py)
    "judge_item": "slate",       # its relevance to the item (a second encoder, never in the reward)
    "judge_history": "slate",    # its relevance to the user's history window
    "judge_masked": "slate",     # the judge with judge_item_masked for judge_item (eval/judge.py)
    "judge_item_masked": "slate",  # item relevance with every title masked (the item's, twice, pays nothing)
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


def compare_runs(records_a: Sequence[Mapping], records_b: Sequence[Mapping], system: str = "recrl",
                 fields: Mapping[str, str] = FIELDS) -> dict[str, dict]:
    """``{field: Comparison as dict}`` of ``system`` in run A minus the same system in run B (rows of the
    two runs' ``explanations.jsonl``), paired on (user, item, set): two runs evaluated with the same
    protocol explain the same pairs, so a difference between the runs is a mean of per-pair differences.

    Raises ``ValueError`` when the runs do not explain exactly the same (user, item) pairs in a set, or a
    pair repeats: then the runs were evaluated on different users or slates and cannot be paired."""
    def index(records, name):
        rows = {}
        for r in records:
            if r["system"] != system:
                continue
            key = (int(r["user_id"]), int(r["item_id"]), r["set"])
            if key in rows:
                raise ValueError(f"run {name} has two {system} explanations of (user, item, set) {key}")
            rows[key] = r
        if not rows:
            raise ValueError(f"run {name} has no explanations of system {system!r}")
        return rows

    a, b = index(records_a, "A"), index(records_b, "B")
    out: dict[str, dict] = {}
    for field, which in fields.items():
        keys_a = sorted(k for k in a if k[2] == which)
        keys_b = sorted(k for k in b if k[2] == which)
        if keys_a != keys_b:
            only = sorted(set(keys_a) ^ set(keys_b))
            raise ValueError(f"the two runs must explain the same (user, item) pairs in set {which!r}; "
                             f"{len(only)} differ, e.g. {only[:3]} (evaluate both with the same --n_users and seed)")
        if not keys_a or any(a[k].get(field) is None or b[k].get(field) is None for k in keys_a):
            continue
        out[field] = paired([float(a[k][field]) for k in keys_a], [float(b[k][field]) for k in keys_a]).as_dict()
    return out



# --- paired bootstrap of the corpus-level text metrics ----------------------------------------------------
N_BOOT = 1000  # resamples of the users per comparison (seeded; all of them take well under a second)


def bootstrap_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) float counts: how often each of ``n`` users is drawn in each resample (n draws with
    replacement), from a seeded generator."""
    idx = numpy_rng(seed).integers(0, n, size=(n_boot, n))
    return np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n) \
        .reshape(n_boot, n).astype(np.float64)


def _paired_rows(system: tm.TextStats, baseline: tm.TextStats) -> tuple[np.ndarray, np.ndarray]:
    """Row orders of ``system`` and ``baseline`` that put the same (user, item) side by side."""
    for name, s in (("system", system), ("baseline", baseline)):
        if len(set(s.keys)) != len(s.keys):
            raise ValueError(f"the {name}'s records repeat a (user_id, item_id) pair; "
                             "one explanation per pair expected")
    if set(system.keys) != set(baseline.keys):
        only = sorted(set(system.keys) ^ set(baseline.keys))
        raise ValueError(f"both systems must explain the same (user_id, item_id) pairs; {len(only)} differ, "
                         f"e.g. {only[:3]}")
    pos_s = {k: i for i, k in enumerate(system.keys)}
    pos_b = {k: i for i, k in enumerate(baseline.keys)}
    keys = sorted(system.keys)
    return np.array([pos_s[k] for k in keys]), np.array([pos_b[k] for k in keys])


def _reorder(stats: tm.TextStats, rows: np.ndarray) -> tm.TextStats:
    def take(a):
        return None if a is None else a[rows]

    return tm.TextStats(keys=[stats.keys[i] for i in rows], n_words=stats.n_words[rows],
                        grams=tuple(g[rows] for g in stats.grams), genre=stats.genre[rows],
                        hallucinated=stats.hallucinated[rows], bleu=take(stats.bleu), rouge=take(stats.rouge),
                        embed=take(stats.embed))


def bootstrap_stats(system: tm.TextStats, baseline: tm.TextStats, n_boot: int = N_BOOT, seed: int = 0,
                    level: float = 0.95) -> dict[str, dict]:
    """``{metric: {diff, lo, hi, n, n_boot}}`` for ``system − baseline`` over the same (user, item) pairs.

    ``diff``: the difference on the full sample; ``lo``/``hi``: the ``level`` percentile interval of the
    resampled differences (``n_boot`` resamples of the users, the same draw for both systems); ``n``: users;
    ``n_boot``: resamples where the metric was defined for both (``genre_precision`` needs a drawn
    explanation naming a genre). A metric undefined on the full sample has ``diff``/``lo``/``hi`` None."""
    rows_s, rows_b = _paired_rows(system, baseline)
    system, baseline = _reorder(system, rows_s), _reorder(baseline, rows_b)
    n = len(rows_s)
    w = bootstrap_weights(n, n_boot, seed)
    full_s, full_b = tm.stats_metrics(system), tm.stats_metrics(baseline)
    boot_s, boot_b = tm.stats_metrics(system, w), tm.stats_metrics(baseline, w)
    tail = 100.0 * (1.0 - level) / 2.0
    out = {}
    for k in tm.RESAMPLED_KEYS:
        if k not in full_s or k not in full_b:
            continue
        d = boot_s[k] - boot_b[k]
        d = d[~np.isnan(d)]
        diff = float(full_s[k][0] - full_b[k][0])
        if math.isnan(diff) or d.size == 0:
            out[k] = {"diff": None, "lo": None, "hi": None, "n": n, "n_boot": int(d.size)}
            continue
        lo, hi = np.percentile(d, [tail, 100.0 - tail])
        out[k] = {"diff": diff, "lo": float(lo), "hi": float(hi), "n": n, "n_boot": int(d.size)}
    return out


def bootstrap_text(system: Sequence[Mapping], baseline: Sequence[Mapping], items, encoder, titles=None,
                   n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, dict]]:
    """``{reference source: {metric: {diff, lo, hi, n, n_boot}}}``: :func:`bootstrap_stats` of two systems'
    test-item records (explanations.jsonl rows: ``user_id``, ``item_id``, ``text``, ``reference``,
    ``reference_source``, …), per reference source, never pooled. The two systems must explain the same
    (user, item) pairs against the same references."""
    titles = titles if titles is not None else tm.TitleIndex(items)
    sys_groups, base_groups = tm.group_by_source(system), tm.group_by_source(baseline)
    if set(sys_groups) != set(base_groups):
        raise ValueError(f"both systems must have the same reference sources; found {sorted(sys_groups)} "
                         f"and {sorted(base_groups)}")
    out = {}
    for src in sys_groups:
        refs = {(int(r["user_id"]), int(r["item_id"])): r["reference"] for r in base_groups[src]}
        if any(refs.get((int(r["user_id"]), int(r["item_id"])), r["reference"]) != r["reference"]
               for r in sys_groups[src]):
            raise ValueError(f"the two systems' {src} references differ for the same (user, item)")
        out[src] = bootstrap_stats(tm.text_stats(sys_groups[src], items, titles, encoder),
                                   tm.text_stats(base_groups[src], items, titles, encoder), n_boot, seed)
    return out


def bootstrap_text_free(system: Sequence[Mapping], baseline: Sequence[Mapping], items, titles=None,
                        n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict]:
    """``{metric: {diff, lo, hi, n, n_boot}}`` of the reference-free resampled metrics (distinct-n, genre
    metrics) over all test users of both systems, whatever their reference source."""
    titles = titles if titles is not None else tm.TitleIndex(items)
    return bootstrap_stats(tm.text_stats(system, items, titles), tm.text_stats(baseline, items, titles),
                           n_boot, seed)


def compare_text(records: Sequence[Mapping], items, encoder, titles=None, baseline: str = "warm_start",
                 which: str = "test_item", n_boot: int = N_BOOT, seed: int = 0) -> tuple[dict, dict]:
    """For every system other than ``baseline`` in ``records`` (rows of explanations.jsonl; only the
    ``which`` set): ``({source: {system: {metric: …}}}, {system: {metric: …}})`` — :func:`bootstrap_text`
    per reference source and :func:`bootstrap_text_free` over all users. ``({}, {})`` without the baseline."""
    by: dict[str, list[Mapping]] = {}
    for r in records:
        if r.get("set", which) == which:
            by.setdefault(r["system"], []).append(r)
    if baseline not in by:
        return {}, {}
    titles = titles if titles is not None else tm.TitleIndex(items)
    per_source: dict[str, dict] = {}
    pooled: dict[str, dict] = {}
    for system, rows in by.items():
        if system == baseline:
            continue
        for src, res in bootstrap_text(rows, by[baseline], items, encoder, titles, n_boot, seed).items():
            per_source.setdefault(src, {})[system] = res
        pooled[system] = bootstrap_text_free(rows, by[baseline], items, titles, n_boot, seed)
    return per_source, pooled
