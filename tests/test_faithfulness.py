"""Leave-one-out attribution on the ranker (ranker/attribution.py) and faithfulness@k (eval/faithfulness.py)."""

from __future__ import annotations

import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

from shielded_recrl.eval.faithfulness import (faithfulness_at_k, faithfulness_score, named_shown_items,
                                              names_latest, top_contributor, top_contributors)
from shielded_recrl.ranker.attribution import (Attribution, leave_one_out, leave_one_out_variants, loo_inputs,
                                               rank_contributors)
from shielded_recrl.ranker.data import histories
from shielded_recrl.ranker.model import SASRec, SASRecConfig
from shielded_recrl.trainer.quality import TitleIndex


def _sasrec(seed=0, **kw) -> SASRec:
    torch.manual_seed(seed)
    cfg = dict(n_items=40, hidden=16, n_layers=2, n_heads=2, max_len=8, dropout=0.3)
    cfg.update(kw)
    return SASRec(SASRecConfig(**cfg))


class BagScorer(torch.nn.Module):
    """h_u = Σ_t e_{u_t} (no positions): deleting j lowers s(u, i) by exactly e_jᵀ e_i."""

    def __init__(self, E: torch.Tensor, max_len: int):
        super().__init__()
        self.cfg = types.SimpleNamespace(max_len=max_len)
        self.E = torch.nn.Parameter(E)
        self.calls = 0

    @property
    def item_table(self):
        return self.E

    def user_state(self, seqs, item_table=None):
        self.calls += 1
        E = self.E if item_table is None else item_table
        return E[seqs].sum(1)  # row 0 of E is zero: padding adds nothing


# --- the variants ------------------------------------------------------------------------------------
def test_variants_delete_and_shift_right():
    seqs = torch.tensor([[0, 5, 6, 7, 8]])
    v = leave_one_out_variants(seqs, 3)
    assert v.shape == (1, 3, 5)
    assert v[0].tolist() == [[0, 0, 5, 7, 8],   # delete 6 (oldest shown)
                             [0, 0, 5, 6, 8],   # delete 7
                             [0, 0, 5, 6, 7]]   # delete 8 (most recent)


def test_extra_column_refills_the_window_from_the_past():
    # max_len 4: the ranker sees [3, 4, 5, 6]; deleting 5 must let the older item 2 back in
    inp = loo_inputs([np.array([1, 2, 3, 4, 5, 6])], 4)
    assert inp.tolist() == [[2, 3, 4, 5, 6]]
    v = leave_one_out_variants(inp, 2)[..., -4:]
    assert v[0].tolist() == [[2, 3, 4, 6], [2, 3, 4, 5]]


# --- attribution on a scorer with a known answer --------------------------------------------------------
def test_known_answer_on_bag_scorer():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(12, 4, generator=g) * 0.1
    E[0] = 0
    E[11] = torch.tensor([1.0, 0, 0, 0])  # the target
    E[7] = torch.tensor([2.0, 0, 0, 0])  # the item the target's score rests on
    E[3] = torch.tensor([-1.0, 0, 0, 0])  # an item that works against it
    model = BagScorer(E, max_len=6)
    seqs = torch.tensor([[0, 1, 7, 2, 3, 4]])
    attr = leave_one_out(model, seqs, torch.tensor([11]), n_shown=4)
    assert attr.items.tolist() == [[7, 2, 3, 4]]
    expected = (E[[7, 2, 3, 4]] * E[11]).sum(1)
    assert torch.allclose(attr.contributions[0], expected, atol=1e-6)
    assert int(top_contributor(attr.items, attr.contributions)[0]) == 7
    _, ranked = rank_contributors(attr)
    assert ranked[0, 0] == 7 and ranked[0, -1] == 3


def test_one_model_pass_per_chunk_not_per_candidate():
    E = torch.randn(20, 4)
    E[0] = 0
    model = BagScorer(E, max_len=8)
    seqs = histories([np.arange(1, 9), np.arange(5, 13), np.arange(2, 6)], 8)
    leave_one_out(model, seqs, torch.tensor([15, 16, 17]), n_shown=5)
    assert model.calls == 1
    model.calls = 0
    a = leave_one_out(model, seqs, torch.tensor([15, 16, 17]), n_shown=5, max_batch=12)
    assert model.calls == math.ceil(3 / (12 // 6))  # whole users per call: 2 then 1
    b = leave_one_out(model, seqs, torch.tensor([15, 16, 17]), n_shown=5)
    assert torch.allclose(a.contributions, b.contributions, equal_nan=True)


# --- attribution on a real (tiny, random) SASRec ---------------------------------------------------------
def _naive(model, seq: np.ndarray, target: int, n_shown: int) -> list[float]:
    """One model call per candidate: the definition, written out."""
    L = model.cfg.max_len
    with torch.no_grad():
        def s(x):
            h = model.user_state(histories([x], L))
            return float(model.scores(h)[0, target])
        base = s(seq)
        out = []
        for p in range(len(seq) - min(n_shown, len(seq)), len(seq)):
            out.append(base - s(np.delete(seq, p)))
    return out


@pytest.mark.parametrize("mask_padding_keys", [True, False])
def test_batched_equals_per_candidate_loop(mask_padding_keys):
    model = _sasrec(mask_padding_keys=mask_padding_keys).eval()
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 41), size=n, replace=False) for n in (12, 9, 8, 3, 1)]  # long … short
    targets = torch.tensor([5, 6, 7, 8, 9])
    n_shown = 4
    attr = leave_one_out(model, loo_inputs(seqs, model.cfg.max_len), targets, n_shown)
    for b, seq in enumerate(seqs):
        want = _naive(model, seq, int(targets[b]), n_shown)
        got = attr.contributions[b][attr.valid[b]]
        assert attr.items[b][attr.valid[b]].tolist() == seq[-n_shown:].tolist()
        assert np.allclose(got.numpy(), want, atol=1e-5), (b, got, want)


def test_short_history_pads_the_front_and_shown_masks_older_slots():
    model = _sasrec().eval()
    seqs = loo_inputs([np.array([3, 4]), np.array([1, 2, 3, 4, 5, 6]), np.array([], dtype=np.int64)], 8)
    attr = leave_one_out(model, seqs, torch.tensor([9, 9, 9]), n_shown=4)
    assert attr.items.tolist() == [[0, 0, 3, 4], [3, 4, 5, 6], [0, 0, 0, 0]]
    assert attr.valid.tolist() == [[False, False, True, True], [True] * 4, [False] * 4]
    assert torch.isnan(attr.contributions[~attr.valid]).all() and torch.isfinite(attr.contributions[attr.valid]).all()
    assert top_contributor(attr.items, attr.contributions)[2] == 0  # no history: no reason
    # the prompt listed only 3 and 1 items of the first two users (token budget)
    part = leave_one_out(model, seqs, torch.tensor([9, 9, 9]), n_shown=4, shown=torch.tensor([3, 1, 4]))
    assert part.items.tolist() == [[0, 0, 3, 4], [0, 0, 0, 6], [0, 0, 0, 0]]
    assert torch.allclose(part.contributions[part.valid], attr.contributions[part.valid])


def test_deterministic_eval_mode_restored_and_inputs_checked():
    model = _sasrec(dropout=0.5).train()
    seqs = loo_inputs([np.arange(1, 15), np.arange(20, 26)], 8)
    a = leave_one_out(model, seqs, torch.tensor([30, 31]), n_shown=5)
    b = leave_one_out(model, seqs, torch.tensor([30, 31]), n_shown=5)
    assert model.training  # put back as found
    assert torch.equal(a.contributions, b.contributions)  # dropout off inside: same numbers every call
    with torch.no_grad():
        model.eval()
        base = model.scores(model.user_state(seqs[:, -8:]))[torch.arange(2), torch.tensor([30, 31])]
    assert torch.allclose(a.base, base, atol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        leave_one_out(model, seqs, torch.tensor([30, 31]), n_shown=9)
    with pytest.raises(ValueError, match="targets"):
        leave_one_out(model, seqs, torch.tensor([30]), n_shown=3)


def test_item_table_override_is_used():
    model = _sasrec().eval()
    seqs = loo_inputs([np.arange(1, 12)], 8)
    a = leave_one_out(model, seqs, torch.tensor([20]), n_shown=3)
    b = leave_one_out(model, seqs, torch.tensor([20]), n_shown=3, item_table=model.item_table.detach() * 3)
    assert not torch.allclose(a.contributions, b.contributions)


def test_rank_ties_go_to_the_more_recent_item():
    attr = Attribution(items=torch.tensor([[0, 4, 5, 6]]), valid=torch.tensor([[False, True, True, True]]),
                       contributions=torch.tensor([[float("nan"), 0.5, 0.2, 0.5]]), base=torch.zeros(1),
                       removed=torch.zeros(1, 4))
    order, ranked = rank_contributors(attr)
    assert ranked.tolist() == [[6, 4, 5, 0]] and order.tolist() == [[3, 1, 2, 0]]
    assert top_contributor(attr.items, attr.contributions).tolist() == [6]


# --- faithfulness@k --------------------------------------------------------------------------------------
NAN = float("nan")
ITEMS = np.array([[1, 2, 3, 4], [0, 0, 5, 6], [7, 8, 9, 10]])
CONTRIB = np.array([[0.1, 0.9, 0.3, 0.9],     # 2 and 4 tie at the top
                    [NAN, NAN, 0.4, -0.2],
                    [-0.1, -0.3, -0.5, 0.0]])  # nothing lowers the score


def test_top_contributors_positive_drops_only_with_ties():
    assert top_contributors(ITEMS, CONTRIB, 1) == [{2, 4}, {5}, set()]
    assert top_contributors(ITEMS, CONTRIB, 3) == [{2, 4, 3}, {5}, set()]
    assert top_contributor(ITEMS, CONTRIB).tolist() == [4, 5, 0]


def test_faithfulness_at_k_on_hand_made_sets():
    named = [{2}, set(), {8, 9}]  # names a top item / names nothing / names only non-contributors
    f1 = faithfulness_at_k(named, ITEMS, CONTRIB, k=1)
    assert f1.hit.tolist() == [1.0, 0.0, 0.0]
    assert f1.named_none.tolist() == [False, True, False]
    assert f1.mean == pytest.approx(1 / 3) and f1.named_none_rate == pytest.approx(1 / 3)
    assert f1.hit_given_named == pytest.approx(0.5)
    # chance: 1 title from 4 with 2 in the top set → 1/2; no title → 0; no contributors → 0
    assert f1.chance.tolist() == pytest.approx([0.5, 0.0, 0.0])
    f = faithfulness_at_k([{1}, {6}, {7}], ITEMS, CONTRIB, k=1)
    assert f.hit.tolist() == [0.0, 0.0, 0.0]
    assert faithfulness_at_k([{1}, {6}, {7}], ITEMS, CONTRIB, k=4).hit.tolist() == [1.0, 0.0, 0.0]
    # names two of four, one top item of 2 → 1 − C(2,2)/C(4,2) = 5/6
    assert faithfulness_at_k([{1, 3}], ITEMS[:1], CONTRIB[:1], k=1).chance[0] == pytest.approx(5 / 6)
    # ids outside the shown items are ignored (the target, an unshown history item)
    assert faithfulness_at_k([{99}], ITEMS[:1], CONTRIB[:1], k=1).named_none[0]


def test_graded_score():
    s = faithfulness_score([{4}, set(), {8}, {2, 1}, {1, 2, 3, 4}], np.r_[ITEMS, ITEMS[:2]],
                           np.r_[CONTRIB, CONTRIB[:2]])
    assert s[0] == pytest.approx(1.0)                    # the top contributor
    assert s[1] == 0.0                                   # names nothing shown
    assert s[2] == -1.0                                  # no contributor; named item raises the score when deleted
    # row 3 repeats pair 0: names top (0.9/0.9) and a weak one (0.1/0.9)
    assert s[3] == pytest.approx((1 + 0.1 / 0.9) / 2)
    # row 4 repeats pair 1 with names outside its shown items → only 5/6 count, none named → 0
    assert s[4] == 0.0
    listing = faithfulness_score([{1, 2, 3, 4}], ITEMS[:1], CONTRIB[:1])[0]
    assert listing < faithfulness_score([{4}], ITEMS[:1], CONTRIB[:1])[0]  # listing everything pays less
    neg = faithfulness_score([{6}], ITEMS[1:2], CONTRIB[1:2])[0]
    assert neg == pytest.approx(-0.2 / 0.4) and -1 <= neg < 0


def test_named_shown_items_with_the_title_matcher():
    items = pd.DataFrame({"item_id": [1, 2, 3, 4, 5], "title": ["Heat", "Fargo", "Toy Story", "Heat", "Kolya"]})
    titles = TitleIndex(items)
    texts = ["Since you liked Heat and Toy Story, try Kolya.", "Fargo fans will enjoy it.",
             "A good film for a quiet night."]
    shown = [[0, 1, 3], [2, 3], [1, 2, 3]]
    # "Heat" names items 1 and 4 (two films share the title); only the shown one counts; Kolya is the target
    # a one-word title opening a sentence ("Fargo fans …") is not a name (TitleIndex's rule)
    assert named_shown_items(titles, texts, shown) == [{1, 3}, set(), set()]
    assert named_shown_items(titles, ["You loved Fargo."], [[2]]) == [{2}]


def test_names_latest_is_the_most_recent_shown_item():
    shown = [[3, 5, 7], [3, 5, 7], [0, 4, 9], [], [2]]  # oldest first; 0 is padding
    named = [{7}, {3, 5}, {9, 4}, set(), set()]
    assert names_latest(named, shown).tolist() == [True, False, True, False, False]
    with pytest.raises(ValueError, match="one shown-item list per text"):
        names_latest(named, shown[:2])
