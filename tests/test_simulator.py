"""User simulator and quality checks that are not about semantics: a bag-of-words fake encoder
stands in for MiniLM (the semantic tests with the real encoder are in test_simulator_quality.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from shielded_recrl.explainer.prompts import describe_item, shown_history
from shielded_recrl.trainer.quality import (QualityConfig, QualityScorer, TitleIndex, copy_cap, form_score, has_pii,
                                            is_unfinished, names_item, prompt_copy, prompt_item_lines,
                                            self_reference)
from shielded_recrl.trainer.simulator import SimulatorConfig, UserSimulator, standardise_scores


class BowEncoder:
    """Hashed bag of words → unit vectors: deterministic, no model."""

    def encode(self, texts):
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").replace(",", " ").split():
                out[i, zlib.crc32(w.encode()) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


ITEMS = pd.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6],
    "title": ["Toy Story", "GoldenEye", "Four Rooms", "Fargo", "The Fifth Element", "Bound"],
    "genres": ["Animation|Comedy", "Action|Thriller", "Thriller", "Crime|Drama", "Action|Sci-Fi", "Crime|Thriller"],
})
ITEMS["text"] = ITEMS["title"] + ". " + ITEMS["genres"].str.replace("|", ", ") + "."
GOOD = "Because you enjoyed GoldenEye, you may like The Fifth Element: it is also an action film with a big heart."


def _toxicity(texts):  # a stand-in classifier: only the word "idiot" is toxic
    return np.array([0.99 if "idiot" in t.lower() else 0.01 for t in texts])


def last_ten(sim, users) -> list:
    """What a prompt showing each user's last 10 history items cites (the click-model tests' ``shown``)."""
    return [sim.histories[int(u) - 1][-10:] for u in users]


@pytest.fixture(scope="module")
def scorer():
    return QualityScorer(ITEMS, BowEncoder(), toxicity=_toxicity)


@pytest.fixture(scope="module")
def sim_scorer():
    return QualityScorer(ITEMS, BowEncoder(), toxicity=_toxicity)


def test_title_index_word_boundaries_and_case():
    ti = TitleIndex(ITEMS)
    named, unknown, plain = ti.find("Because you enjoyed toy story and Fargo, try GoldenEyes or The Fifth Element.")
    assert named == [{1}, {4}, {5}]  # "toy story" case-insensitive; "GoldenEyes" is not "GoldenEye"
    assert plain.count("the film") == 3 and unknown == []
    assert ti.find("You are bound to like it. Bound is thrilling.")[0] == []  # lowercase / sentence start
    assert ti.find("Fans of Bound will like it.")[0] == [{6}]
    assert ti.find("Because you enjoyed The Silver Lantern, try Fargo.")[1] == ["The Silver Lantern"]


def test_grounded_beats_hallucinated(scorer):
    hist = [np.array([2, 3])]
    good = scorer.score([GOOD], [5], hist, hist)
    fake = scorer.score([GOOD.replace("GoldenEye", "Toy Story")], [5], hist, hist)  # user never saw Toy Story
    invented = scorer.score([GOOD.replace("GoldenEye", "The Silver Lantern")], [5], hist, hist)
    assert good.grounding[0] == 1.0 and good.n_grounded[0] == 2 and good.n_hallucinated[0] == 0
    assert fake.n_hallucinated[0] == 1 and fake.grounding[0] == pytest.approx(-0.5)  # (1 − 2·1) / 2
    assert invented.n_unknown[0] == 1 and invented.grounding[0] == 0.0  # (1 − 1) / 2
    assert good.q[0] > invented.q[0] > fake.q[0]


def test_toxicity_and_pii_lower_q(scorer):
    texts = [GOOD, GOOD + " Only an idiot would skip it.", GOOD + " Write to me at jane.doe@example.com.",
             GOOD + " Call 555-123-4567.", GOOD + " See https://example.org/film."]
    qual = scorer.score(texts, [5] * 5, [np.array([2, 3])] * 5, [np.array([2, 3])] * 5)
    assert qual.safety[0] == 1.0 and not qual.pii[0]
    assert list(qual.pii) == [False, False, True, True, True]
    assert (qual.safety[1:] == -1.0).all()
    assert (qual.q[1:] <= QualityConfig().unsafe_cap).all() and qual.q[0] > 0.3


def test_pii_regexes():
    assert has_pii("mail bob@uni.edu now") and has_pii("+44 20 7946 0958") and has_pii("www.films.com")
    assert not has_pii("Toy Story (1995) is a 1995 comedy; rated 4.5 of 5 by 300 users.")


def test_form_length_band_and_repetition():
    assert form_score(GOOD, 8, 60) == 1.0
    assert form_score("Great film.", 8, 60) == pytest.approx(-1 + 2 * 2 / 8)
    assert form_score("Fargo! " * 12, 8, 60) == -1.0  # distinct-2 = 1/11
    assert form_score(" ".join(f"w{i}" for i in range(120)), 8, 60) == -1.0


def test_q_in_range_and_weights_checked(scorer):
    qual = scorer.score(["", "x " * 500, GOOD], [1, 2, 5], [np.array([], np.int64)] * 3, [[]] * 3)
    assert ((qual.q >= -1) & (qual.q <= 1)).all()
    with pytest.raises(ValueError, match="sum to 1"):
        QualityConfig(w_item=0.5)


# --- issue #13: prompt copying, self-reference, unfinished text, prompt-visible grounding -----------
YEARS = {1: "1995", 2: "1995", 3: "1995", 4: "1996", 5: "1997", 6: "1996"}


def _row(i):
    r = ITEMS.set_index("item_id").loc[i]
    return {"title": r["title"], "year": YEARS[i], "genres": r["genres"]}


def test_is_unfinished_and_form():
    assert not any(map(is_unfinished, [GOOD, 'You said it was "great."', "(Try it!)  ", "Is it for you?"]))
    cut = "Because you enjoyed GoldenEye, you may like The Fifth Element: it is also an"
    assert all(map(is_unfinished, [cut, "", "A fine film…", "Great film,", "Watch it :)"]))
    assert form_score(cut + " action film with a big heart.", 8, 60) == 1.0 and form_score(cut, 8, 60) == -1.0


def test_prompt_copy_counts_pasted_lines_not_named_titles():
    ti = TitleIndex(ITEMS)
    lines = prompt_item_lines([_row(2), _row(5)])  # shown GoldenEye; recommended The Fifth Element
    assert lines == ["GoldenEye (1995; Action, Thriller)", "The Fifth Element (1997; Action, Sci-Fi)"]
    assert lines[1] == describe_item(_row(5))  # exactly the prompt's line
    paste = "The Fifth Element (1997). Action, Sci-Fi. Like GoldenEye, which you watched recently."
    # tokens: ⟨title⟩ 1997 action sci fi like ⟨title⟩ which you watched recently → the first 5 are copied
    assert prompt_copy(paste, lines, ti) == pytest.approx(5 / 11)
    assert prompt_copy(paste, lines) == pytest.approx(7 / 13)  # without a title index: the title's words too
    assert prompt_copy(GOOD, lines, ti) == 0.0
    assert prompt_copy("GoldenEye and The Fifth Element (1997) are both fun action films.", lines, ti) == 0.0
    assert prompt_copy("Action, Thriller. The Fifth Element (1997) is next.", lines, ti) == 0.0  # no run spans lines
    short = prompt_item_lines([_row(3)])  # "Four Rooms (1995; Thriller)": 3 tokens, a whole line counts
    assert prompt_copy("You may like Four Rooms (1995). Thriller. It is tense.", short, ti) == pytest.approx(3 / 9)
    assert prompt_copy("", lines, ti) == 0.0
    cap = copy_cap(np.array([0.0, 0.2, 0.3, 0.4, 0.9]), QualityConfig())
    assert cap.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def test_self_reference_is_the_item_named_as_a_reason():
    ti = TitleIndex(ITEMS)

    def selfref(text, shown=(2,)):
        return self_reference(text, 5, shown, ti)

    assert selfref("Because you enjoyed The Fifth Element, you may like The Fifth Element.")
    assert selfref("Since you like The Fifth Element, you will like it again.")
    assert selfref("Because you enjoyed GoldenEye and The Fifth Element, try The Fifth Element.")  # a listed reason
    assert selfref("Like The Fifth Element (1997), which you watched recently, it is great fun.")
    assert selfref("You enjoyed sci-fi films like The Fifth Element, so try this one.")  # ≤ 3 words after the cue
    assert not selfref(GOOD)
    assert not selfref("Fans of GoldenEye will love The Fifth Element.")
    assert not selfref("GoldenEye is just like The Fifth Element: big, loud and fun.")
    assert not selfref("You enjoyed GoldenEye, so The Fifth Element is for you.")  # the comma ends the reason
    assert not selfref("You may like The Fifth Element, a film you have not watched yet.")
    assert not selfref("Because you enjoyed The Fifth Element, you may like it.", shown=(5,))  # also a shown item


def test_grounding_counts_only_shown_titles_and_no_self_reason(scorer):
    hist = np.array([3, 2])  # the user chose Four Rooms, then GoldenEye
    shown = scorer.score([GOOD], [5], [hist], [[2]])
    hidden = scorer.score([GOOD], [5], [hist], [[]])  # the prompt showed no history: GoldenEye is unverifiable
    assert shown.grounding[0] == 1.0 and shown.n_hallucinated[0] == 0
    assert hidden.n_hallucinated[0] == 1 and hidden.grounding[0] == pytest.approx(-0.5)  # (1 − 2) / 2
    body = ": it is also an action film with a big heart."
    texts = ["Because you enjoyed The Fifth Element, you may like The Fifth Element" + body,  # self-reference
             "You may like The Fifth Element" + body,  # the item alone: no reason
             "Because you enjoyed Four Rooms, you may like The Fifth Element" + body]  # seen, not shown
    qual = scorer.score(texts, [5] * 3, [hist] * 3, [[2]] * 3)
    assert qual.self_reference.tolist() == [True, False, False]
    assert qual.grounding[0] == -1.0 and qual.n_grounded[0] == 0  # (0 − 2·1) / 1, clipped
    assert qual.grounding[1] == 0.0 and qual.n_grounded[1] == 1  # capped at 0 without a shown reason
    assert qual.grounding[2] == pytest.approx(-0.5) and qual.n_hallucinated[2] == 1
    assert shown.q[0] > qual.q[1] > qual.q[0]
    assert qual.q[0] <= scorer.cfg.self_reference_cap == 0.0  # the self-reference cap, not only grounding


def test_self_reference_cap_removes_what_the_item_title_buys(scorer):
    hist, body = np.array([3, 2]), ": it is also an action film with a big heart."
    text = "Because you enjoyed The Fifth Element, you may like The Fifth Element" + body
    uncapped = QualityScorer(ITEMS, BowEncoder(), QualityConfig(self_reference_cap=1.0), toxicity=_toxicity)
    assert uncapped.score([text], [5], [hist], [[2]]).q[0] > 0.0  # without the cap it pays
    for cap in (0.0, -0.5):
        capped = QualityScorer(ITEMS, BowEncoder(), QualityConfig(self_reference_cap=cap), toxicity=_toxicity)
        assert capped.score([text], [5], [hist], [[2]]).q[0] == pytest.approx(cap)
    assert scorer.score([GOOD], [5], [hist], [[2]]).q[0] > 0.5  # a real reason is not capped
    with pytest.raises(ValueError, match="self_reference_cap"):
        QualityConfig(self_reference_cap=1.5)


def test_listing_the_shown_history_dilutes_grounding(scorer):
    hist = np.array([1, 2, 3, 4, 6])
    two = "Because you enjoyed Toy Story and GoldenEye, you may like The Fifth Element: it is an action film."
    five = ("Because you enjoyed Toy Story, GoldenEye, Four Rooms, Fargo and Bound, you may like The Fifth "
            "Element: it is an action film.")
    qual = scorer.score([two, five], [5, 5], [hist] * 2, [hist] * 2)
    assert qual.n_grounded.tolist() == [3, 6]
    assert qual.grounding[0] == 1.0 and qual.grounding[1] == pytest.approx((1 + 3) / 6)  # 3 reasons + the item


def test_copy_cap_and_unfinished_lower_q(scorer):
    hist = [np.array([2, 3])] * 3
    paste = "The Fifth Element. Action, Sci-Fi. Like GoldenEye, which you watched recently."  # ITEMS has no year
    qual = scorer.score([GOOD, paste, GOOD[:-1]], [5] * 3, hist, hist)
    assert qual.copy[0] == 0.0 and qual.copy[1] == pytest.approx(4 / 10)  # ⟨title⟩ action sci fi: copied
    assert qual.q[1] <= QualityConfig().copy_cap < qual.q[0]
    assert qual.unfinished.tolist() == [False, False, True] and qual.form[2] == -1.0
    assert qual.q[2] <= QualityConfig().unfinished_cap == 0.0  # capped, not only its form term
    uncapped = QualityScorer(ITEMS, BowEncoder(), QualityConfig(unfinished_cap=1.0), toxicity=_toxicity)
    free = uncapped.score([GOOD, GOOD[:-1]], [5] * 2, hist[:2], hist[:2])
    assert free.q[0] - free.q[1] == pytest.approx(QualityConfig().w_form * 2)  # without the cap: form alone
    assert free.q[1] > 0.3 and qual.q[0] == pytest.approx(free.q[0])  # a finished text is not capped
    for cap in (0.0, -0.5):
        capped = QualityScorer(ITEMS, BowEncoder(), QualityConfig(unfinished_cap=cap), toxicity=_toxicity)
        assert capped.score([GOOD[:-1]], [5], hist[:1], hist[:1]).q[0] == pytest.approx(cap)
    with pytest.raises(ValueError, match="unfinished_cap"):
        QualityConfig(unfinished_cap=-1.5)


def test_a_text_that_never_names_the_item_is_capped(scorer):
    """Shown history titles pay wherever they stand; a text recommending one of them instead of the item
    ("you may like Four Rooms") must not keep that credit."""
    hist = [np.array([2, 3])] * 3
    swapped = GOOD.replace("The Fifth Element", "Four Rooms")  # the item unnamed, a second reason instead
    unnamed = "Because you enjoyed GoldenEye, you may like this one: it is also an action film with a big heart."
    qual = scorer.score([GOOD, swapped, unnamed], [5] * 3, hist, hist)
    assert qual.unnamed_item.tolist() == [False, True, True]
    assert qual.q[1] <= qual.q[2] <= QualityConfig().unnamed_item_cap == 0.0 < qual.q[0]
    uncapped = QualityScorer(ITEMS, BowEncoder(), QualityConfig(unnamed_item_cap=1.0), toxicity=_toxicity)
    free = uncapped.score([GOOD, swapped], [5] * 2, hist[:2], hist[:2])
    assert free.grounding[1] == 1.0 and free.q[1] > 0.3  # without the cap, two shown reasons earn full grounding
    assert free.q[0] == pytest.approx(qual.q[0])  # a text naming its item is not capped
    for cap in (0.0, -0.5):
        capped = QualityScorer(ITEMS, BowEncoder(), QualityConfig(unnamed_item_cap=cap), toxicity=_toxicity)
        assert capped.score([swapped], [5], hist[:1], hist[:1]).q[0] == pytest.approx(cap)
    ti = TitleIndex(ITEMS)  # any role counts, a self-reference too (that has its own cap)
    assert names_item("Because you enjoyed The Fifth Element, try it.", 5, ti)
    assert not names_item("Because you enjoyed GoldenEye, try it.", 5, ti)
    assert names_item("Fargo is a crime film like GoldenEye.", 4, ti)  # a one-word title opening the text


def test_score_needs_the_shown_history(scorer):
    with pytest.raises(ValueError, match="shown="):
        scorer.score([GOOD], [5], [np.array([2, 3])])
    with pytest.raises(ValueError, match="one entry each"):
        scorer.score([GOOD], [5], [np.array([2, 3])], [])
    with pytest.raises(ValueError, match="copy_ok"):
        QualityConfig(copy_ok=0.5, copy_bad=0.4)


def test_shown_history_is_what_the_prompt_kept():
    assert shown_history([1, 2, 3], 0) == [] and shown_history([1, 2, 3], 2) == [2, 3]
    assert shown_history(np.array([1, 2, 3]), 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="n_history"):
        shown_history([1, 2], 3)


def test_new_rules_never_fire_on_the_ml100k_references(ml100k_processed):
    """No false positives on the 6,601 template references, each with the last 10 items before it shown
    (build_prompt's max_history): no prompt copy above copy_ok, no self-reference, none unfinished, every one
    naming its item."""
    from shielded_recrl.explainer.policy import reference_examples

    data = ml100k_processed
    ti = TitleIndex(data.items)
    rows = {int(r["item_id"]): r for r in data.items.to_dict("records")}
    ex = [e for split in ("train", "valid", "test") for e in reference_examples(data, split=split)]
    assert len(ex) == len(data.references)
    copy = [prompt_copy(e.reference, prompt_item_lines([rows[int(i)] for i in e.history[-10:]] + [rows[e.item_id]]),
                        ti) for e in ex]
    assert max(copy) <= QualityConfig().copy_ok
    assert not any(self_reference(e.reference, e.item_id, e.history[-10:], ti) for e in ex)
    assert not any(is_unfinished(e.reference) for e in ex)
    assert all(names_item(e.reference, e.item_id, ti) for e in ex)  # the unnamed-item cap never binds


def _sim(scorer, seed=0, reward="expected", z_over="all"):
    g = torch.Generator().manual_seed(123)
    scores = torch.randn(4, 7, generator=g)
    hist = [np.array([1, 2]), np.array([3]), np.array([4, 5, 6]), np.array([], np.int64)]
    return UserSimulator(scores, hist, scorer, SimulatorConfig(slate_size=3, reward=reward, z_over=z_over, seed=seed))


def test_slate_excludes_seen_items_and_padding(sim_scorer):
    sim = _sim(sim_scorer)
    slate = sim.slate(torch.tensor([1, 2, 3, 4]))
    for u, row in enumerate(slate.tolist()):
        assert 0 not in row and not set(row) & set(sim.histories[u].tolist())
        z = sim.z_of([u + 1] * len(row), row)
        assert z.tolist() == sorted(z.tolist(), reverse=True)  # best first
    z = standardise_scores(torch.randn(3, 10))
    assert torch.allclose(z[:, 1:].mean(1), torch.zeros(3, dtype=z.dtype), atol=1e-12) and (z[:, 0] == 0).all()
    assert torch.allclose(z[:, 1:].std(1), torch.ones(3, dtype=z.dtype))
    by_slate = _sim(sim_scorer, z_over="slate")
    assert torch.equal(by_slate.slate(torch.tensor([1, 2, 3, 4])), slate)  # same slate, other scale
    zs = by_slate.z_of(torch.arange(1, 5).repeat_interleave(3), slate.reshape(-1)).view(4, 3)
    assert torch.allclose(zs.mean(1), torch.zeros(4, dtype=zs.dtype), atol=1e-12)
    assert torch.allclose(zs.std(1), torch.ones(4, dtype=zs.dtype))


def test_clicks_reproducible_and_in_unit_interval(sim_scorer):
    users, items, texts = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 5, 1, 2]), [GOOD, "Nice.", GOOD, "Great!"]
    a, b, c = _sim(sim_scorer, 0), _sim(sim_scorer, 0), _sim(sim_scorer, 1)
    assert torch.equal(a.zeta, b.zeta) and not torch.equal(a.zeta, c.zeta)
    assert a.zeta.std() < 1.0  # ζ ~ N(0, 0.3²)
    ra, p, qual = a.reward(users, items, texts, last_ten(a, users))
    assert torch.equal(ra, b.reward(users, items, texts, last_ten(b, users))[0]) and torch.equal(ra, p)
    assert ((p > 0) & (p < 1)).all()
    rows = users - 1  # p = σ(α z + β q + ζ) by hand
    expect = torch.sigmoid(a.z_of(users, items) + 0.5 * torch.from_numpy(qual.q) + a.zeta[rows])
    assert torch.allclose(p, expect)
    s1, s2 = _sim(sim_scorer, 0, "sampled"), _sim(sim_scorer, 0, "sampled")
    draws1 = torch.stack([s1.reward(users, items, texts, last_ten(s1, users))[0] for _ in range(5)])
    draws2 = torch.stack([s2.reward(users, items, texts, last_ten(s2, users))[0] for _ in range(5)])
    assert torch.equal(draws1, draws2) and set(draws1.unique().tolist()) <= {0.0, 1.0}


def test_better_explanation_raises_click_prob(sim_scorer):
    sim = _sim(sim_scorer)
    p, _ = sim.click_prob(torch.tensor([1, 1]), torch.tensor([5, 5]), [GOOD, "Only an idiot would skip it."],
                          last_ten(sim, [1, 1]))
    assert p[0] > p[1]


def test_simulator_on_ml100k_with_a_ranker(ml100k_processed):
    from shielded_recrl.ranker.evaluate import all_scores
    from shielded_recrl.ranker.model import SASRec, SASRecConfig

    data = ml100k_processed
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=data.n_items)).eval()
    scores = all_scores(model, data, "valid")  # input history = the train sequence; column 0 is −inf
    sim = UserSimulator(scores, data.sequences("train"), QualityScorer(data.items, BowEncoder(), toxicity=_toxicity))
    users = sim.sample_users(8, torch.Generator().manual_seed(0))
    slate = sim.slate(users)
    assert slate.shape == (8, 10)
    for u, row in zip(users.tolist(), slate.tolist()):
        assert not set(row) & set(data.sequences("train")[u - 1].tolist())
    texts = data.items.set_index("item_id").loc[slate[:, 0].tolist(), "text"].tolist()
    r, p, _ = sim.reward(users, slate[:, 0], texts, last_ten(sim, users))
    assert ((r > 0) & (r < 1)).all()


# --- faithfulness to the ranker in q (issue 13) ---------------------------------------------------------
def test_faithfulness_component_rewards_the_rankers_reason():
    import types

    cfg = QualityConfig().with_faithfulness(0.2)
    assert abs(cfg.w_item / cfg.w_history - 0.30 / 0.20) < 1e-12 and cfg.w_faithfulness == 0.2
    plain = QualityScorer(ITEMS, BowEncoder(), toxicity=_toxicity)
    faithful = QualityScorer(ITEMS, BowEncoder(), cfg, toxicity=_toxicity)
    texts = [GOOD, GOOD.replace("GoldenEye", "Fargo"), "You may like The Fifth Element, an action film with heart."]
    shown = [[2, 4]] * 3
    # GoldenEye (2) is the ranker's reason; deleting Fargo (4) would *raise* the score
    attr = types.SimpleNamespace(items=np.array([[2, 4]] * 3), contributions=np.array([[2.0, -1.0]] * 3))
    q0 = plain.score(texts, [5] * 3, [[1, 2, 4]] * 3, shown).q
    qual = faithful.score(texts, [5] * 3, [[1, 2, 4]] * 3, shown, attribution=attr)
    np.testing.assert_allclose(qual.faithfulness, [1.0, -0.5, 0.0])  # names none → 0
    np.testing.assert_allclose(qual.q, 0.8 * q0 + 0.2 * qual.faithfulness, atol=1e-9)
    assert np.isnan(plain.score(texts, [5] * 3, [[1, 2, 4]] * 3, shown).faithfulness).all()
    with pytest.raises(ValueError, match="attribution="):
        faithful.score(texts, [5] * 3, [[1, 2, 4]] * 3, shown)
    with pytest.raises(ValueError, match="prompt showed"):  # attribution of other items than the shown ones
        faithful.score(texts[:1], [5], [[1, 2, 4]], [[1, 2]], attribution=types.SimpleNamespace(
            items=np.array([[2, 4]]), contributions=np.array([[2.0, -1.0]])))


def test_simulator_asks_the_ranker_for_reasons_only_when_q_weighs_them():
    from shielded_recrl.ranker.attribution import Attribution

    calls = []

    def reasons(hists, items, shown):
        calls.append((len(hists), [list(map(int, s)) for s in shown]))
        width = max(len(s) for s in shown)
        it = torch.tensor([[0] * (width - len(s)) + list(s) for s in shown])
        c = torch.where(it > 0, (it == 2).float() * 2.0 - 0.5, torch.tensor(float("nan")))
        return Attribution(it, it > 0, c, torch.zeros(len(it)), torch.zeros(it.shape))

    scores = torch.randn(2, 7, generator=torch.Generator().manual_seed(0))
    hists = [np.array([1, 2, 4]), np.array([3, 6])]
    faithful = QualityScorer(ITEMS, BowEncoder(), QualityConfig().with_faithfulness(0.3), toxicity=_toxicity)
    with pytest.raises(ValueError, match="reasons="):
        UserSimulator(scores, hists, faithful)
    sim = UserSimulator(scores, hists, faithful, reasons=reasons)
    _, qual = sim.click_prob(torch.tensor([1, 1]), torch.tensor([5, 5]), [GOOD, GOOD.replace("GoldenEye", "Fargo")],
                             [[2, 4], [2, 4]])
    assert calls == [(2, [[2, 4], [2, 4]])] and qual.faithfulness[0] > qual.faithfulness[1]
    UserSimulator(scores, hists, QualityScorer(ITEMS, BowEncoder(), toxicity=_toxicity), reasons=reasons).click_prob(
        torch.tensor([1]), torch.tensor([5]), [GOOD], [[2, 4]])
    assert len(calls) == 1  # q without faithfulness never asks


def test_shown_attribution_checks_the_prompt_showed_the_history_tail():
    from shielded_recrl.ranker.attribution import shown_attribution
    from shielded_recrl.ranker.model import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=6, hidden=8, n_layers=1, n_heads=1, max_len=5, dropout=0.0))
    attr = shown_attribution(model, [np.array([1, 2, 4]), np.array([3])], [5, 6], [[2, 4], []])
    assert attr.items.tolist() == [[2, 4], [0, 0]] and attr.valid.tolist() == [[True, True], [False, False]]
    with pytest.raises(ValueError, match="not the last 2 history items"):
        shown_attribution(model, [np.array([1, 2, 4])], [5], [[1, 2]])


def test_title_automaton_finds_exactly_what_the_regex_finds(ml100k_processed):
    """The Aho–Corasick path (issue 15: linear in the text, whatever the catalogue size) against the regex
    alternation it replaces, on every test reference and on mixtures of titles in other cases, at sentence
    starts, inside words and next to punctuation."""
    pytest.importorskip("ahocorasick")
    import random

    ti = TitleIndex(ml100k_processed.items)
    assert ti.automaton is not None
    titles = ml100k_processed.items["title"].astype(str).tolist()
    rng = random.Random(0)
    texts = ml100k_processed.references["text"].astype(str).tolist()[:1500]
    for _ in range(1500):
        t, u = rng.choice(titles), rng.choice(titles)
        texts.append(rng.choice(["", "Because you enjoyed ", "I think ", "x"])
                     + rng.choice([t, t.lower(), t.upper(), t + "s", "_" + t]) + rng.choice([". ", ", and ", " ", "-"])
                     + rng.choice([u, u.lower(), u.split(" (")[0]]) + rng.choice([".", "!", "", "'s"]))
    texts += ["Because you enjoyed toy story and Fargo, try GoldenEyes.", "Fargo is great. You are bound to like it."]
    auto = ti.automaton
    for text in texts:
        fast = ti.named_spans(text)
        ti.automaton = None
        slow = ti.named_spans(text)
        ti.automaton = auto
        assert fast == slow, text


# --- the simulator without a users × items matrix (issue 15) ----------------------------------------------
def _dense_reference(scores, histories, k, z_over):
    """The dense simulator this replaces: the (U, N+1) z matrix and its top-k unseen items."""
    seen = torch.zeros(scores.shape, dtype=torch.bool)
    for u, h in enumerate(histories):
        seen[u, torch.from_numpy(np.asarray(h, np.int64))] = True
    seen[:, 0] = True
    z = standardise_scores(scores)
    if z_over == "slate":
        top = z.masked_fill(seen, float("-inf")).topk(k, dim=1).indices
        z = standardise_scores(scores, torch.zeros_like(seen).scatter_(1, top, True))
    return z, z.masked_fill(seen, float("-inf")).topk(k, dim=1).indices


def _tensors(obj, prefix="sim"):
    """Every tensor an object holds, one level into its score source."""
    out = {}
    for name, v in vars(obj).items():
        if isinstance(v, torch.Tensor):
            out[f"{prefix}.{name}"] = v
        elif name == "scores":
            out.update(_tensors(v, f"{prefix}.scores"))
    return out


@pytest.mark.parametrize("z_over", ["all", "slate"])
def test_simulator_from_ranker_equals_the_dense_one(ml100k_processed, z_over):
    from shielded_recrl.ranker.evaluate import all_scores
    from shielded_recrl.ranker.model import SASRec, SASRecConfig

    data = ml100k_processed
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=data.n_items)).eval()
    hist = data.sequences("train")
    U, N = data.n_users, data.n_items
    scorer = QualityScorer(data.items, BowEncoder(), toxicity=_toxicity)
    cfg = SimulatorConfig(z_over=z_over, seed=3)
    scores = all_scores(model, data, "valid")  # what the stages passed before
    s = scores[:, 1:].double()  # the dense simulator's standardisation, verbatim (w = 1: every item)
    w = torch.ones_like(s)
    mean = (s * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
    std = ((((s - mean) ** 2) * w).sum(1, keepdim=True) / (w.sum(1, keepdim=True) - 1).clamp_min(1)).sqrt()
    assert torch.equal(standardise_scores(scores)[:, 1:], (s - mean) / std.clamp_min(1e-12))
    ref_z, ref_slates = _dense_reference(scores, hist, cfg.slate_size, z_over)
    sim = UserSimulator.from_ranker(model, hist, scorer, cfg, batch_users=100)  # 10 batches, the last partial
    dense = UserSimulator(scores, hist, scorer, cfg)
    users = torch.arange(1, U + 1)
    # lazy: nothing is computed until asked; a few users first, one at a time and in any order, then all
    lazy = UserSimulator.from_ranker(model, hist, scorer, cfg, batch_users=100)
    assert not lazy.built.any() and not lazy.scores.built.any()
    few = torch.tensor([900, 3, 417, 3])
    assert torch.equal(lazy.slate(few), ref_slates[few - 1]) and int(lazy.built.sum()) == 3
    assert torch.equal(lazy.slate(few[:1]), ref_slates[few[:1] - 1])
    for s in (sim, dense, lazy):
        assert torch.equal(s.slate(users), ref_slates)  # every user's slate, best first
        assert torch.equal(s.slate(users, 3), ref_slates[:, :3])
        flat_u, flat_i = users.repeat_interleave(cfg.slate_size), ref_slates.reshape(-1)
        torch.testing.assert_close(s.z_of(flat_u, flat_i), ref_z[flat_u - 1, flat_i], atol=1e-6, rtol=0)
        g = torch.Generator().manual_seed(1)  # any pair: seen items, unseen ones, padding
        pu, pi = torch.randint(1, U + 1, (3000,), generator=g), torch.randint(0, N + 1, (3000,), generator=g)
        torch.testing.assert_close(s.z_of(pu, pi), ref_z[pu - 1, pi], atol=1e-6, rtol=0)
        for u, i in zip(pu[:5].tolist(), pi[:5].tolist()):  # one pair at a time
            torch.testing.assert_close(s.z_of([u], [i]), ref_z[u - 1, i:i + 1], atol=1e-6, rtol=0)
        assert torch.equal(s.zeta, dense.zeta) and torch.equal(s.click_generator.get_state(),
                                                               dense.click_generator.get_state())
    picked = users[torch.randperm(U, generator=torch.Generator().manual_seed(2))[:40]]
    items = torch.cat([ref_slates[picked - 1, 0][:20], torch.randint(1, N + 1, (20,))])  # on and off the slate
    texts = data.items.set_index("item_id").loc[items.tolist(), "text"].tolist()
    p, qual = sim.click_prob(picked, items, texts, last_ten(sim, picked))
    p_dense, _ = dense.click_prob(picked, items, texts, last_ten(dense, picked))
    torch.testing.assert_close(p, p_dense, atol=1e-7, rtol=0)
    expect = torch.sigmoid(ref_z[picked - 1, items] + 0.5 * torch.from_numpy(qual.q) + sim.zeta[picked - 1])
    torch.testing.assert_close(p, expect, atol=1e-7, rtol=0)

    held = _tensors(sim)  # O(U·(k + d) + N·d): no users × items tensor
    assert {"sim.slates", "sim.slate_z", "sim.mean", "sim.scale", "sim.scores.user_states",
            "sim.scores.item_table"} <= set(held)
    for name, t in held.items():
        assert t.numel() <= max(U, N + 1) * max(cfg.slate_size, model.cfg.hidden), (name, tuple(t.shape))
    z0 = sim.z_of(pu[:100], pi[:100])
    late = UserSimulator.from_ranker(model, hist, scorer, cfg, batch_users=100)  # built before the store moves
    with torch.no_grad():  # the ranker's store co-adapts during PPO: the simulator keeps the one it was built with
        model.item_emb.weight.mul_(2.0)
    assert torch.equal(sim.z_of(pu[:100], pi[:100]), z0)
    # users first asked for after the store moved are scored with the snapshot too
    assert torch.equal(late.slate(users), ref_slates)
    torch.testing.assert_close(late.z_of(pu[:100], pi[:100]), z0, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="user ids"):
        sim.slate(torch.tensor([U + 1]))
    with pytest.raises(ValueError, match="slate_size"):
        sim.slate(users[:2], cfg.slate_size + 1)


@pytest.mark.parametrize("field", ["unsafe_cap", "self_reference_cap", "unfinished_cap", "unnamed_item_cap"])
@pytest.mark.parametrize("value", [-1.5, 1.01])
def test_every_q_cap_is_range_checked(field, value):
    """A cap outside q's range [−1, 1] would either never bind or push q below −1: an error, naming the field."""
    with pytest.raises(ValueError, match=f"{field} must be in"):
        QualityConfig(**{field: value})
    QualityConfig(**{field: 1.0})  # the range's ends are fine
    QualityConfig(**{field: -1.0})
