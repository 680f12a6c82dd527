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


def test_rank_counts_wins_and_ties_apart():
    # user 0, target 2 (0.9) ties with item 4 (0.9): 0 greater, 1 tie → expected rank 0.5
    r = M.target_ranks(SCORES, torch.tensor([2, 5]))
    assert r.greater.tolist() == [0, 0] and r.ties.tolist() == [1, 0]
    assert r.expected().tolist() == [0.5, 0.0]
    # target 1 (0.5): items 2 and 4 beat it → rank 2; user 1 target 1 (0.2): 4 items beat it
    r = M.target_ranks(SCORES, torch.tensor([1, 1]))
    assert r.greater.tolist() == [2, 4] and r.ties.tolist() == [0, 0]


def test_masking_removes_seen_items_and_never_the_target():
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 2] = True  # seen item 2 no longer beats target 1
    exclude[1, [1, 4, 5]] = True  # target 1 marked seen: still ranked; items 4, 5 removed
    assert M.target_ranks(SCORES, torch.tensor([1, 1]), exclude).greater.tolist() == [1, 2]
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 4] = True  # the tied item 4 is seen: user 0's target 2 no longer ties
    assert M.target_ranks(SCORES, torch.tensor([2, 5]), exclude).ties.tolist() == [0, 0]


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
    assert torch.equal(r1.greater, r2.greater) and int(r1.greater.max()) <= 100 and not r1.ties.any()
    # exactly 100 allowed items (target excluded) → the negatives are those items, whatever the seed
    inter = torch.ones(1, N + 1, dtype=torch.bool)
    inter[0, 200:301] = False  # 101 free items, one is the target
    r = M.sampled_ranks(scores[:1], torch.tensor([200]), inter, torch.Generator().manual_seed(3))
    assert int(r.greater) == int((scores[0, 201:301] > scores[0, 200]).sum())
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
    lists = D.item_lists(seqs, 10)  # the sparse form the evaluation keeps; any rows, any order
    assert torch.equal(lists.mask(torch.tensor([2, 0, 1])), m[[2, 0, 1]])


def test_evaluate_scorer_protocols_on_a_fixed_scorer():
    # 2 users, 5 items; scores fixed per user; user 0 has seen item 2 (which outscores its target 1)
    inputs = D.EvalInputs(histories=torch.tensor([[0, 2], [0, 3]]), targets=torch.tensor([1, 5]),
                          seen=D.item_lists([np.array([2]), np.array([3])], 5),
                          interacted=D.item_lists([np.zeros(0, np.int64)] * 2, 5))
    res = evaluate_scorer(lambda hist, rows: SCORES[rows], inputs, protocols=("full_masked", "full_unmasked"))
    assert res["ranks"]["full_unmasked"].greater.tolist() == [2, 0]
    assert res["ranks"]["full_masked"].greater.tolist() == [1, 0]
    assert res["metrics"]["full_masked"]["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert res["per_user"]["full_masked"]["hr@10"].tolist() == [1.0, 1.0]


# ---- ties count ½ (random tie-breaking) and non-finite scores are refused ---------------------------


def expected_ndcg(greater: int, ties: int, k: int) -> float:
    """By hand: the target's position is uniform on greater..greater+ties."""
    positions = range(greater, greater + ties + 1)
    return sum(1 / math.log2(r + 2) if r < k else 0.0 for r in positions) / len(positions)


def test_constant_scores_score_like_random_tie_breaking_not_perfect():
    scores = torch.zeros(1, 21)  # padding + 20 candidates, all tied
    scores[0, 0] = 100.0
    r = M.target_ranks(scores, torch.tensor([7]))
    assert (int(r.greater), int(r.ties)) == (0, 19) and float(r.expected()) == 9.5
    by_hand = sum(1 / math.log2(p + 2) for p in range(10)) / 20  # positions 0..19 equally likely
    assert float(M.ndcg_at_k(r, 10)) == pytest.approx(by_hand, rel=1e-12)
    assert float(M.ndcg_at_k(r, 10)) < 0.5
    assert float(M.hr_at_k(r, 10)) == 0.5 and float(M.hr_at_k(r, 20)) == 1.0
    assert M.summarise(r, (10,))["ndcg@10"] == pytest.approx(by_hand, rel=1e-12)


def test_two_way_tie_by_hand():
    # target 3 scores 0.7; item 1 beats it, item 2 ties it: positions 1 and 2, each with probability ½
    scores = torch.tensor([[9.0, 0.9, 0.7, 0.7, 0.1]])
    r = M.target_ranks(scores, torch.tensor([3]))
    assert (int(r.greater), int(r.ties)) == (1, 1)
    assert float(M.ndcg_at_k(r, 10)) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2, rel=1e-12)
    assert float(M.ndcg_at_k(r, 2)) == pytest.approx(1 / math.log2(3) / 2, rel=1e-12)  # position 2 falls out
    assert float(M.hr_at_k(r, 2)) == 0.5 and float(M.hr_at_k(r, 1)) == 0.0 and float(M.hr_at_k(r, 3)) == 1.0


def test_tied_ndcg_matches_the_hand_formula_on_many_cases():
    g = torch.tensor([0, 0, 3, 8, 9, 9, 12, 0])
    t = torch.tensor([0, 4, 2, 5, 0, 30, 3, 1000])
    got = M.ndcg_at_k(M.Ranks(g, t), 10)
    assert got.tolist() == pytest.approx([expected_ndcg(a, b, 10) for a, b in zip(g.tolist(), t.tolist())],
                                         rel=1e-12)
    hr = M.hr_at_k(M.Ranks(g, t), 10)
    assert hr.tolist() == pytest.approx([sum(p < 10 for p in range(a, a + b + 1)) / (b + 1)
                                         for a, b in zip(g.tolist(), t.tolist())], rel=1e-12)


def test_without_ties_every_number_equals_the_strict_rule_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 301, generator=gen, dtype=torch.float64)
    targets = torch.randint(1, 301, (64,), generator=gen)
    exclude = torch.rand(64, 301, generator=gen) < 0.2
    strict = ((scores > scores.gather(1, targets.view(-1, 1))) & ~exclude)
    strict[:, 0] = False
    strict = strict.sum(1)
    r = M.target_ranks(scores, targets, exclude)
    assert not r.ties.any() and torch.equal(r.greater, strict)
    for k in (1, 10, 20, 500):
        old_ndcg = torch.where(strict < k, 1.0 / torch.log2(strict.to(torch.float64) + 2.0), 0.0)
        assert torch.equal(M.ndcg_at_k(r, k), old_ndcg)
        assert torch.equal(M.ndcg_at_k(r, k), M.ndcg_at_k(strict, k))
        assert torch.equal(M.hr_at_k(r, k), (strict < k).to(torch.float64))
    assert M.summarise(r) == M.summarise(strict)


def test_plain_fractional_ranks_are_refused():
    with pytest.raises(ValueError, match="fractional"):
        M.ndcg_at_k(torch.tensor([0.5, 2.0]), 10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_target_or_competitor_is_refused(bad):
    targets = torch.tensor([2, 5])
    for col in (2, 3):  # the target of user 0, then one of its competitors
        scores = SCORES.clone()
        scores[0, col] = bad
        with pytest.raises(ValueError, match=r"1 non-finite values .* in 1 of 2 rows \(first: row 0\)"):
            M.target_ranks(scores, targets)
        inter = torch.zeros(2, 6, dtype=torch.bool)
        with pytest.raises(ValueError, match="refusing to rank"):
            M.sampled_ranks(scores, targets, inter, torch.Generator().manual_seed(0), n_neg=3)


def test_non_finite_where_it_cannot_matter_is_allowed():
    scores = SCORES.clone()
    scores[:, 0] = float("-inf")  # padding, as evaluate.all_scores writes it
    scores[0, 4] = float("-inf")  # a masked (seen) item
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 4] = True
    r = M.target_ranks(scores, torch.tensor([2, 5]), exclude)
    assert r.greater.tolist() == [0, 0] and r.ties.tolist() == [0, 0]
    inter = exclude.clone()  # interacted items are never drawn as negatives
    M.sampled_ranks(scores, torch.tensor([2, 5]), inter, torch.Generator().manual_seed(0), n_neg=3)


def test_evaluate_scorer_refuses_a_diverged_scorer_naming_the_rows():
    n_users, n_items = 70, 5
    inputs = D.EvalInputs(histories=torch.zeros(n_users, 2, dtype=torch.long),
                          targets=torch.ones(n_users, dtype=torch.long),
                          seen=D.item_lists([np.zeros(0, np.int64)] * n_users, n_items),
                          interacted=D.item_lists([np.zeros(0, np.int64)] * n_users, n_items))

    def diverged(hist, rows):
        s = torch.rand(len(rows), n_items + 1, generator=torch.Generator().manual_seed(0))
        s[rows == 66, 1:4] = float("nan")  # user row 66, in the second batch of 64
        return s

    with pytest.raises(ValueError, match=r"3 non-finite values \(3 NaN, 0 ±inf\) in 1 of 6 rows \(first: row 66\)"):
        evaluate_scorer(diverged, inputs, batch_size=64, protocols=("full_masked",))
