"""Ranking metrics and evaluation inputs against hand-computed cases (pure functions, no data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shielded_recrl.ranker import data as D
from shielded_recrl.ranker import metrics as M
from shielded_recrl.ranker.evaluate import evaluate_scorer

# items 1..5; column 0 is padding and gets a huge score that must never count
SCORES = torch.tensor([[100.0, 0.5, 0.9, 0.1, 0.9, 0.3],
                       [100.0, 0.2, 0.4, 0.6, 0.8, 1.0]])


def test_rank_one_and_ties_count_only_strictly_greater():
    # user 0, target 2 (0.9) ties with item 4 (0.9): tie does not count → rank 0
    assert M.target_ranks(SCORES, torch.tensor([2, 5])).tolist() == [0, 0]
    # target 1 (0.5): items 2 and 4 beat it → rank 2; user 1 target 1 (0.2): 4 items beat it
    assert M.target_ranks(SCORES, torch.tensor([1, 1])).tolist() == [2, 4]


def test_masking_removes_seen_items_and_never_the_target():
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 2] = True  # seen item 2 no longer beats target 1
    exclude[1, [1, 4, 5]] = True  # target 1 marked seen: still ranked; items 4, 5 removed
    assert M.target_ranks(SCORES, torch.tensor([1, 1]), exclude).tolist() == [1, 2]


def test_ndcg_and_hr_hand_values():
    ranks = torch.tensor([0, 2, 9, 10, 25])
    assert M.ndcg_at_k(ranks, 10).tolist() == pytest.approx([1.0, 0.5, 1 / math.log2(11), 0.0, 0.0])
    assert M.hr_at_k(ranks, 10).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert M.ndcg_at_k(ranks, 20)[3] == pytest.approx(1 / math.log2(12))  # beyond 10, inside 20
    s = M.summarise(ranks, (10,))
    assert s["hr@10"] == pytest.approx(0.6)
    assert s["ndcg@10"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(11)) / 5)


def test_sampled_negatives_avoid_interacted_and_are_seeded():
    N = 300
    scores = torch.randn(4, N + 1, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 2, 3, 4])
    interacted = torch.zeros(4, N + 1, dtype=torch.bool)
    interacted[:, 10:150] = True
    allowed = ~interacted
    allowed[:, 0] = False
    negs = M.sample_negatives(allowed, 100, torch.Generator().manual_seed(0))
    assert negs.shape == (4, 100)
    assert not interacted.gather(1, negs).any() and not (negs == 0).any()
    assert all(len(set(row.tolist())) == 100 for row in negs)  # without replacement
    r1 = M.sampled_ranks(scores, targets, interacted, torch.Generator().manual_seed(7))
    r2 = M.sampled_ranks(scores, targets, interacted, torch.Generator().manual_seed(7))
    assert torch.equal(r1, r2) and int(r1.max()) <= 100
    # exactly 100 allowed items (target excluded) → the negatives are those items, whatever the seed
    inter = torch.ones(1, N + 1, dtype=torch.bool)
    inter[0, 200:301] = False  # 101 free items, one is the target
    r = M.sampled_ranks(scores[:1], torch.tensor([200]), inter, torch.Generator().manual_seed(3))
    assert int(r) == int((scores[0, 201:301] > scores[0, 200]).sum())
    with pytest.raises(ValueError):
        M.sampled_ranks(scores[:1], torch.tensor([200]), inter | (torch.arange(N + 1) == 250), torch.Generator())


def test_histories_left_padded_and_windows_cover_every_pair_once():
    seqs = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9, 10]), np.array([7])]
    h = D.histories(seqs, 4)
    assert h.tolist() == [[0, 1, 2, 3], [7, 8, 9, 10], [0, 0, 0, 7]]
    w = D.train_windows(seqs, 4)
    pairs = sorted((int(x), int(y)) for xs, ys in zip(w.inputs, w.targets) for x, y in zip(xs, ys) if y > 0)
    expected = sorted((int(s[i]), int(s[i + 1])) for s in seqs for i in range(len(s) - 1))
    assert pairs == expected
    assert w.inputs[1:].tolist() == [[6, 7, 8, 9], [0, 0, 4, 5]]  # from the end, then step back
    assert w.targets[1:].tolist() == [[7, 8, 9, 10], [0, 0, 5, 6]]
    assert ((w.inputs > 0) == (w.targets > 0)).all()  # a target exactly where there is an input
    assert w.users.tolist() == [0, 1, 1]
    m = D.item_mask(seqs, 10)
    assert m.shape == (3, 11) and m[1, 4:11].all() and not m[1, :4].any() and m[2].sum() == 1


def test_evaluate_scorer_protocols_on_a_fixed_scorer():
    # 2 users, 5 items; scores fixed per user; user 0 has seen item 2 (which outscores its target 1)
    inputs = D.EvalInputs(histories=torch.tensor([[0, 2], [0, 3]]), targets=torch.tensor([1, 5]),
                          seen=torch.tensor([[0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool),
                          interacted=torch.zeros(2, 6, dtype=torch.bool))
    res = evaluate_scorer(lambda hist, rows: SCORES[rows], inputs, protocols=("full_masked", "full_unmasked"))
    assert res["ranks"]["full_unmasked"].tolist() == [2, 0]
    assert res["ranks"]["full_masked"].tolist() == [1, 0]
    assert res["metrics"]["full_masked"]["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert res["per_user"]["full_masked"]["hr@10"].tolist() == [1.0, 1.0]
