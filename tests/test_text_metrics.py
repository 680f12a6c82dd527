"""Explanation metrics (code/eval/text_metrics.py) on hand-made texts with hand-computed values."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest

from shielded_recrl.eval import text_metrics as tm
from shielded_recrl.trainer.quality import TitleIndex

# titles as in data/proc/ml100k/items.parquet: the year is a separate column, not part of the title
ITEMS = pd.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6],
    "title": ["Toy Story", "GoldenEye", "Twelve Monkeys", "Star Wars", "Fargo",
              "Shanghai Triad (Yao a yao yao dao waipo qiao)"],
    "genres": ["Animation|Children's|Comedy", "Action|Adventure|Thriller", "Drama|Sci-Fi",
               "Action|Adventure|Romance|Sci-Fi|War", "Crime|Drama|Thriller", ""],
})


class HashEncoder:
    """Bag-of-words hashing: texts with the same words get cosine 1, disjoint words (no collision) 0."""

    def encode(self, texts):
        out = np.zeros((len(texts), 512))
        for i, t in enumerate(texts):
            for w in tm.words(t):
                out[i, zlib.crc32(w.encode()) % 512] += 1.0
        return out


def rec(text, ref, item_id=1, history=(), source="template", system="recrl"):
    return {"system": system, "user_id": 1, "item_id": item_id, "text": text, "reference": ref,
            "reference_source": source, "history": list(history), "slate": [item_id], "q": 0.0, "ctr": 0.0}


def test_identical_and_disjoint_overlap():
    same = ["this is a warm family comedy with great jokes", "a tense thriller that keeps you guessing"]
    b, r = tm.bleu(same, same), tm.rouge(same, same)
    assert b["bleu1"] == pytest.approx(1.0) and b["bleu4"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in r.values())
    assert tm.embedding_similarity(same, same, HashEncoder()) == pytest.approx(1.0)
    hyps, refs = ["alpha beta gamma delta epsilon"], ["one two three four five"]
    assert tm.bleu(hyps, refs) == {"bleu1": 0.0, "bleu4": 0.0}
    assert all(v == 0.0 for v in tm.rouge(hyps, refs).values())
    assert tm.embedding_similarity(hyps, refs, HashEncoder()) == pytest.approx(0.0)


def test_bleu1_hand_computed_with_brevity_penalty():
    # pair 1: clipped unigram matches the:2, cat:1 → 3 of 4; pair 2: 2 of 2. Corpus p1 = 5/6,
    # hyp length c = 6, ref length r = 8 → BP = exp(1 − 8/6)
    hyps, refs = ["the cat the cat", "a dog"], ["the cat is on the mat", "a dog"]
    assert tm.bleu(hyps, refs)["bleu1"] == pytest.approx(5 / 6 * math.exp(1 - 8 / 6), abs=1e-6)
    # lowercased: case does not change the score
    assert tm.bleu(["The Cat the CAT", "A dog"], refs)["bleu1"] == pytest.approx(5 / 6 * math.exp(1 - 8 / 6), abs=1e-6)


def test_rouge_stems_and_averages_pairs():
    r = tm.rouge(["the films were funny", "x y"], ["the film was funny", "x y"])
    # pair 1 with stemming: the/film/funny shared of 4 and 4 tokens → F1 3/4; pair 2 → 1
    assert r["rouge1"] == pytest.approx((0.75 + 1.0) / 2)


def test_usr_distinct_and_length():
    texts = ["A great film.", "a great film", "A great story!"]
    assert tm.unique_sentence_ratio(texts) == pytest.approx(2 / 3)  # case/punctuation normalised away
    # unigrams: a,great,film,a,great,film,a,great,story → distinct {a,great,film,story} = 4 of 9
    assert tm.distinct_n(texts, 1) == pytest.approx(4 / 9)
    # bigrams: (a great)×3, (great film)×2, (great story) → 3 distinct of 6
    assert tm.distinct_n(texts, 2) == pytest.approx(3 / 6)
    assert tm.distinct_n(["one"], 2) == 0.0
    assert tm.mean_length(texts + ["don't stop"]) == pytest.approx((3 + 3 + 3 + 2) / 4)


@pytest.mark.parametrize("text,genres,expected", [
    ("A smart Sci-Fi puzzle.", "Drama|Sci-Fi", True),
    ("great sci fi and scifi fans", "Sci-Fi", True),
    ("classic science fiction", "Sci-Fi", True),
    ("a scientific mind at work", "Sci-Fi", False),
    ("perfect for children and adults", "Animation|Children's|Comedy", True),
    ("a childrens classic", "Children's", True),
    ("one of the best comedies", "Comedy", True),
    ("a dark film noir", "Film-Noir", True),
    ("a Film-Noir gem", "Film-Noir", True),
    ("a warm story", "War", False),
    ("it won many awards", "War", False),
    ("a war epic", "Drama|War", True),
    ("a tense thriller", "Drama|Sci-Fi", False),
    ("anything at all", "", False),
])
def test_mentions_genre(text, genres, expected):
    assert tm.mentions_genre(text, genres) is expected


def test_hallucination_and_feature_match_on_records():
    titles = TitleIndex(ITEMS)
    records = [
        rec("Like GoldenEye, Toy Story is a fun comedy.", "r", item_id=1, history=[2]),  # history title: fine
        rec("If you liked Twelve Monkeys you will love Toy Story.", "r", item_id=1, history=[2]),  # unseen → bad
        rec("A gripping story you will enjoy.", "r", item_id=4, history=[]),  # names nothing, no genre
        rec("Star Wars is a crowd pleaser.", "r", item_id=4, history=[]),  # its own title: "Wars" ≠ genre War
    ]
    named, _, _ = titles.find(records[1]["text"])
    assert tm.is_hallucinated(named, 1, [2]) and not tm.is_hallucinated(named, 1, [3])
    m = tm.explanation_metrics(records, ITEMS, HashEncoder(), titles)
    assert list(m) == list(tm.METRIC_KEYS)
    assert m["hallucination_rate"] == pytest.approx(1 / 4)
    assert m["feature_match"] == pytest.approx(1 / 4)  # only "comedy" for Toy Story
    assert m["n"] == 4
    assert tm.explanation_metrics(records, ITEMS, HashEncoder())["hallucination_rate"] == pytest.approx(1 / 4)


def test_explanation_metrics_keys_values_and_by_source():
    records = [rec("a funny animated film for kids", "a funny animated film for kids", source="template"),
               rec("a funny animated film for kids", "a funny animated film for kids", source="template"),
               rec("totally unrelated words here", "one two three four", source="review")]
    m = tm.explanation_metrics(records, ITEMS, HashEncoder())
    assert m["usr"] == pytest.approx(2 / 3)
    assert m["feature_match"] == pytest.approx(2 / 3)  # "animated", "kids"; the third names no genre
    assert m["mean_len"] == pytest.approx((6 + 6 + 4) / 3)
    assert m["embed_sim"] == pytest.approx(2 / 3)
    src = tm.by_source(records, ITEMS, HashEncoder())
    assert list(src) == ["review", "template"]
    assert src["template"]["bleu4"] == pytest.approx(1.0) and src["template"]["n"] == 2
    assert src["review"]["bleu1"] == 0.0 and src["review"]["rougeL"] == 0.0


def test_bad_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="at least one record"):
        tm.explanation_metrics([], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="at least one record"):
        tm.by_source([], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="one system"):
        tm.explanation_metrics([rec("a", "a"), rec("a", "a", system="base")], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="lacks"):
        tm.explanation_metrics([{"text": "a"}], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="not in the items table"):
        tm.explanation_metrics([rec("a", "a", item_id=99)], ITEMS, HashEncoder())
