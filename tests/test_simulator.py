"""User simulator and quality checks that are not about semantics: a bag-of-words fake encoder
stands in for MiniLM (the semantic tests with the real encoder are in test_simulator_quality.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from shielded_recrl.trainer.quality import QualityConfig, QualityScorer, TitleIndex, form_score, has_pii
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


@pytest.fixture(scope="module")
def scorer():
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
    good = scorer.score([GOOD], [5], hist)
    fake = scorer.score([GOOD.replace("GoldenEye", "Toy Story")], [5], hist)  # user never saw Toy Story
    invented = scorer.score([GOOD.replace("GoldenEye", "The Silver Lantern")], [5], hist)
    assert good.grounding[0] == 1.0 and good.n_grounded[0] == 2 and good.n_hallucinated[0] == 0
    assert fake.n_hallucinated[0] == 1 and fake.grounding[0] == pytest.approx(-0.5)  # (1 − 2·1) / 2
    assert invented.n_unknown[0] == 1 and invented.grounding[0] == 0.0  # (1 − 1) / 2
    assert good.q[0] > invented.q[0] > fake.q[0]


def test_toxicity_and_pii_lower_q(scorer):
    texts = [GOOD, GOOD + " Only an idiot would skip it.", GOOD + " Write to me at jane.doe@example.com.",
             GOOD + " Call 555-123-4567.", GOOD + " See https://example.org/film."]
    qual = scorer.score(texts, [5] * 5, [np.array([2, 3])] * 5)
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
    qual = scorer.score(["", "x " * 500, GOOD], [1, 2, 5], [np.array([], np.int64)] * 3)
    assert ((qual.q >= -1) & (qual.q <= 1)).all()
    with pytest.raises(ValueError, match="sum to 1"):
        QualityConfig(w_item=0.5)


def _sim(scorer, seed=0, reward="expected", z_over="all"):
    g = torch.Generator().manual_seed(123)
    scores = torch.randn(4, 7, generator=g)
    hist = [np.array([1, 2]), np.array([3]), np.array([4, 5, 6]), np.array([], np.int64)]
    return UserSimulator(scores, hist, scorer, SimulatorConfig(slate_size=3, reward=reward, z_over=z_over, seed=seed))


def test_slate_excludes_seen_items_and_padding(scorer):
    sim = _sim(scorer)
    slate = sim.slate(torch.tensor([1, 2, 3, 4]))
    for u, row in enumerate(slate.tolist()):
        assert 0 not in row and not set(row) & set(sim.histories[u].tolist())
        z = sim.z[u]
        assert z[row].tolist() == sorted(z[row].tolist(), reverse=True)  # best first
    z = standardise_scores(torch.randn(3, 10))
    assert torch.allclose(z[:, 1:].mean(1), torch.zeros(3, dtype=z.dtype), atol=1e-12) and (z[:, 0] == 0).all()
    assert torch.allclose(z[:, 1:].std(1), torch.ones(3, dtype=z.dtype))
    by_slate = _sim(scorer, z_over="slate")
    assert torch.equal(by_slate.slate(torch.tensor([1, 2, 3, 4])), slate)  # same slate, other scale
    zs = by_slate.z.gather(1, slate)
    assert torch.allclose(zs.mean(1), torch.zeros(4, dtype=zs.dtype), atol=1e-12)
    assert torch.allclose(zs.std(1), torch.ones(4, dtype=zs.dtype))


def test_clicks_reproducible_and_in_unit_interval(scorer):
    users, items, texts = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 5, 1, 2]), [GOOD, "Nice.", GOOD, "Great!"]
    a, b, c = _sim(scorer, 0), _sim(scorer, 0), _sim(scorer, 1)
    assert torch.equal(a.zeta, b.zeta) and not torch.equal(a.zeta, c.zeta)
    assert a.zeta.std() < 1.0  # ζ ~ N(0, 0.3²)
    ra, p, qual = a.reward(users, items, texts)
    assert torch.equal(ra, b.reward(users, items, texts)[0]) and torch.equal(ra, p)
    assert ((p > 0) & (p < 1)).all()
    rows = users - 1  # p = σ(α z + β q + ζ) by hand
    expect = torch.sigmoid(a.z[rows, items] + 0.5 * torch.from_numpy(qual.q) + a.zeta[rows])
    assert torch.allclose(p, expect)
    s1, s2 = _sim(scorer, 0, "sampled"), _sim(scorer, 0, "sampled")
    draws1 = torch.stack([s1.reward(users, items, texts)[0] for _ in range(5)])
    draws2 = torch.stack([s2.reward(users, items, texts)[0] for _ in range(5)])
    assert torch.equal(draws1, draws2) and set(draws1.unique().tolist()) <= {0.0, 1.0}


def test_better_explanation_raises_click_prob(scorer):
    sim = _sim(scorer)
    p, _ = sim.click_prob(torch.tensor([1, 1]), torch.tensor([5, 5]), [GOOD, "Only an idiot would skip it."])
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
    r, p, _ = sim.reward(users, slate[:, 0], texts)
    assert ((r > 0) & (r < 1)).all()
