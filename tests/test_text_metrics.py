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
    # Li et al. (2016): distinct n-grams / total generated words (9 here), not / all n-grams
    # unigrams: a,great,film,a,great,film,a,great,story → distinct {a,great,film,story} = 4, over 9 words
    assert tm.distinct_n(texts, 1) == pytest.approx(4 / 9)
    # bigrams: (a great)×3, (great film)×2, (great story) → 3 distinct, over the same 9 words (not 6 bigrams)
    assert tm.distinct_n(texts, 2) == pytest.approx(3 / 9)
    assert tm.distinct_n(["one"], 2) == 0.0 and tm.distinct_n([""], 1) == 0.0
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


def test_hallucination_and_genre_mention_on_records():
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
    assert "feature_match" not in m  # renamed: a genre mention is not PETER's FMR
    assert m["genre_mention"] == pytest.approx(1 / 4)  # only "comedy" for Toy Story
    assert m["n"] == 4
    assert tm.explanation_metrics(records, ITEMS, HashEncoder())["hallucination_rate"] == pytest.approx(1 / 4)


def test_explanation_metrics_keys_values_and_by_source():
    records = [rec("a funny animated film for kids", "a funny animated film for kids", source="template"),
               rec("a funny animated film for kids", "a funny animated film for kids", source="template"),
               rec("totally unrelated words here", "one two three four", source="review")]
    # reference-based metrics are never pooled over reference sources
    with pytest.raises(ValueError, match="one reference source"):
        tm.explanation_metrics(records, ITEMS, HashEncoder())
    m = tm.reference_free_metrics(records, ITEMS)
    assert list(m) == list(tm.REFERENCE_FREE_KEYS) and not set(m) & set(tm.REFERENCE_KEYS)
    assert m["usr"] == pytest.approx(2 / 3)
    assert m["genre_mention"] == pytest.approx(2 / 3)  # "animated", "kids"; the third names no genre
    assert m["mean_len"] == pytest.approx((6 + 6 + 4) / 3)
    assert tm.explanation_metrics(records[:2], ITEMS, HashEncoder())["embed_sim"] == pytest.approx(1.0)
    src = tm.by_source(records, ITEMS, HashEncoder())
    assert src["review"]["embed_sim"] == pytest.approx(0.0)
    assert list(src) == ["review", "template"]
    assert src["template"]["bleu4"] == pytest.approx(1.0) and src["template"]["n"] == 2
    assert src["review"]["bleu1"] == 0.0 and src["review"]["rougeL"] == 0.0


def test_bad_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="at least one record"):
        tm.explanation_metrics([], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="at least one record"):
        tm.by_source([], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="one system"):
        tm.reference_free_metrics([rec("a", "a"), rec("a", "a", system="base")], ITEMS)
    with pytest.raises(ValueError, match="one system"):
        tm.explanation_metrics([rec("a", "a"), rec("a", "a", system="base")], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="lacks"):
        tm.explanation_metrics([{"text": "a"}], ITEMS, HashEncoder())
    with pytest.raises(ValueError, match="not in the items table"):
        tm.explanation_metrics([rec("a", "a", item_id=99)], ITEMS, HashEncoder())


@pytest.mark.parametrize("text,named,negated", [
    ("a fun comedy with a dash of romance", {"Comedy", "Romance"}, set()),
    ("not a comedy but a tense thriller", {"Thriller"}, {"Comedy"}),
    ("it isn't really a comedy", set(), {"Comedy"}),
    ("it isn’t a comedy", set(), {"Comedy"}),  # curly apostrophe
    ("no horror here, just drama", {"Drama"}, {"Horror"}),
    ("a comedy, not a drama", {"Comedy"}, {"Drama"}),
    ("classic science fiction", {"Sci-Fi"}, set()),
    ("a great story", set(), set()),
])
def test_named_genres_skips_negated_mentions(text, named, negated):
    vocab = tm.genre_vocabulary(ITEMS) + ("Horror",)
    assert tm.genre_vocabulary(ITEMS)[:3] == ("Action", "Adventure", "Animation")
    assert tm.named_genres(text, vocab) == (named, negated)


def test_named_genres_keeps_the_longest_overlapping_span():
    # "Science Fiction" is one genre here; its words must not also count as "Fiction"
    assert tm.named_genres("great science fiction", ["Fiction", "Science Fiction"]) == ({"Science Fiction"}, set())
    assert tm.named_genres("a non-fiction read", ["Fiction"]) == (set(), {"Fiction"})


def test_genre_precision_and_recall_hand_counted():
    records = [
        rec("A fun comedy for kids.", "r", item_id=1),          # Toy Story: Animation|Children's|Comedy
        rec("A comedy and a war film.", "r", item_id=1),        # one right (comedy), one wrong (war)
        rec("Not a comedy; a thriller.", "r", item_id=3),       # Twelve Monkeys: Drama|Sci-Fi: thriller wrong
        rec("A great story.", "r", item_id=3),                  # names no genre
        rec("A drama.", "r", item_id=6),                        # Shanghai Triad has no genre
    ]
    m = tm.reference_free_metrics(records, ITEMS)
    # precision over the 4 naming a genre: 2/2, 1/2, 0/1 (comedy negated), 0/1 → 1.5/4
    assert m["genre_named_rate"] == pytest.approx(4 / 5)
    assert m["genre_precision"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    # recall over the 4 with genres: 2/3, 1/3, 0/2, 0/2 (the item without genres is left out)
    assert m["genre_recall"] == pytest.approx((2 / 3 + 1 / 3) / 4)
    # genre_mention counts any mention of an item genre, the negated "not a comedy" included (it is Toy
    # Story's genre, not Twelve Monkeys', so record 3 does not count): records 1 and 2
    assert m["genre_mention"] == pytest.approx(2 / 5)
    nothing = tm.reference_free_metrics([rec("A great story.", "r", item_id=6)], ITEMS)
    assert nothing["genre_precision"] is None and nothing["genre_recall"] is None and nothing["genre_named_rate"] == 0


def test_bleu_from_summed_statistics_is_sacrebleu_corpus_bleu():
    rng = np.random.default_rng(0)
    vocab = "the a film story great funny dark tense war comedy you will love it is".split()
    hyps = [" ".join(rng.choice(vocab, rng.integers(1, 15))) for _ in range(60)]
    refs = [" ".join(rng.choice(vocab, rng.integers(3, 15))) for _ in range(60)]
    stats = tm.bleu_statistics(hyps, refs)
    assert stats.shape == (60, 10)
    direct, summed = tm.bleu(hyps, refs), tm.bleu_from_statistics(stats.sum(0))
    assert summed["bleu4"] == pytest.approx(direct["bleu4"], abs=1e-9) and 0 < direct["bleu4"] < 1
    assert summed["bleu1"] == pytest.approx(direct["bleu1"], abs=1e-9)


def test_weighted_statistics_equal_metrics_of_the_duplicated_records():
    """A bootstrap weight of 2 is the record drawn twice: every resampled metric is exact."""
    records = [rec("A fun comedy for kids.", "a funny film for kids", item_id=1),
               rec("A tense war film, not a comedy.", "a war film", item_id=4),
               rec("Great story.", "a drama with a great story", item_id=3)]
    stats = tm.text_stats(records, ITEMS, encoder=HashEncoder())
    weighted = tm.stats_metrics(stats, np.array([[2.0, 0.0, 1.0]]))
    direct = tm.explanation_metrics([records[0], records[0], records[2]], ITEMS, HashEncoder())
    for k in tm.RESAMPLED_KEYS:
        assert weighted[k][0] == pytest.approx(direct[k], abs=1e-12), k
