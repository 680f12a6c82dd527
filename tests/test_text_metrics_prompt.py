"""Issue #13's evaluation rates (code/eval/text_metrics.py): hallucination against the history the prompt
showed, invented titles, prompt-copy, self-reference and unfinished rates, on hand-made records with
hand-counted values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shielded_recrl.eval import text_metrics as tm
from shielded_recrl.trainer.quality import TitleIndex

ITEMS = pd.DataFrame({
    "item_id": [1, 2, 3, 4],
    "title": ["Toy Story", "GoldenEye", "Twelve Monkeys", "Fargo"],
    "year": ["1995", "1995", "1995", "1996"],
    "genres": ["Animation|Children's|Comedy", "Action|Adventure|Thriller", "Drama|Sci-Fi", "Crime|Drama|Thriller"],
})


class ConstEncoder:
    def encode(self, texts):
        return np.ones((len(texts), 4))


def rec(text, item_id=1, history=(2, 3), shown=None):
    r = {"system": "recrl", "user_id": 1, "item_id": item_id, "text": text, "reference": "ref",
         "reference_source": "template", "history": list(history), "slate": [item_id], "q": 0.0, "ctr": 0.0}
    if shown is not None:
        r["shown"] = list(shown)
    return r


def test_hallucination_counts_against_the_shown_history():
    text = "Because you enjoyed GoldenEye, you may like Toy Story: it is also a comedy."
    named, _, _ = TitleIndex(ITEMS).find(text)
    assert not tm.is_hallucinated(named, 1, [2, 3]) and tm.is_hallucinated(named, 1, [3])
    records = [rec(text, shown=[3]), rec(text, shown=[2]), rec(text)]  # the prompt showed only Twelve Monkeys
    assert [tm.shown_of(r) for r in records] == [[3], [2], [2, 3]]  # without "shown": "history" is what it showed
    m = tm.explanation_metrics(records, ITEMS, ConstEncoder())
    assert m["hallucination_rate"] == pytest.approx(1 / 3)


def test_invented_titles_are_counted_apart_from_hallucinated_catalogue_titles():
    titles = TitleIndex(ITEMS)
    records = [
        rec("Because you enjoyed The Black Lagoons, you may like Toy Story: it is also a comedy."),  # invented
        rec("Because you enjoyed GoldenEye, you may like Toy Story: it is also a comedy."),  # shown, real
        rec("Because you enjoyed Fargo, you may like Toy Story: it is also a comedy.", shown=[2]),  # real, unshown
        rec("Because you enjoyed GoldenEye, you may like Toy Story: it is also a comedy film."),
    ]
    assert tm.invented_title_rate(records, titles) == pytest.approx(1 / 4)
    m = tm.explanation_metrics(records, ITEMS, ConstEncoder(), titles)
    assert (m["invented_title_rate"], m["hallucination_rate"]) == pytest.approx((0.25, 0.25))  # different texts
    assert tm.invented_title_rate([], titles) == 0.0


def test_failure_indicators_flag_what_q_penalises_one_text_at_a_time():
    from shielded_recrl.trainer.quality import QualityConfig, QualityScorer, failure_indicators

    texts = ["Because you enjoyed The Black Lagoons, you may like Toy Story: it is also a comedy.",
             "Because you enjoyed Fargo, you may like Toy Story: it is also a comedy.",
             "Because you enjoyed Toy Story, you may like Toy Story: it is a comedy.",
             "Because you enjoyed GoldenEye, you may like Toy Story: it is also a",
             "Because you enjoyed GoldenEye, you may like Toy Story: it is also a comedy."]
    scorer = QualityScorer(ITEMS.assign(text=ITEMS["title"]), ConstEncoder(), QualityConfig(),
                           toxicity=lambda t: np.zeros(len(t)))
    qual = scorer.score(texts, [1] * 5, [[2, 3]] * 5, [[2]] * 5)
    ind = failure_indicators(qual, scorer.cfg)
    assert ind["invented_title"].tolist() == [1, 0, 0, 0, 0]
    assert ind["hallucinated"].tolist() == [0, 1, 0, 0, 0]
    assert ind["self_reference"].tolist() == [0, 0, 1, 0, 0]
    assert ind["unfinished"].tolist() == [0, 0, 0, 1, 0]
    assert all(v.dtype == float and v.shape == (5,) for v in ind.values())


def test_prompt_copy_self_reference_and_unfinished_rates():
    titles = TitleIndex(ITEMS)
    records = [
        rec("Toy Story (1995). Animation, Children's, Comedy. Like GoldenEye, which you watched."),  # 5 of 10 copied
        rec("Because you enjoyed GoldenEye, you may like Toy Story: it is also a comedy."),
        rec("Because you enjoyed Toy Story, you may like Toy Story: it is a comedy."),  # self-reference
        rec("Because you enjoyed GoldenEye, you may like Toy Story: it is also a"),  # cut off
    ]
    assert tm.prompt_copy_rate(records, ITEMS, titles) == pytest.approx(1 / 4)
    assert tm.prompt_copy_rate(records[:1], ITEMS, titles, threshold=0.5) == 0.0  # 0.5 is not above 0.5
    assert tm.self_reference_rate(records, titles) == pytest.approx(1 / 4)
    assert tm.unfinished_rate([r["text"] for r in records]) == pytest.approx(1 / 4)
    assert tm.unnamed_item_rate(records, titles) == 0.0  # every one names Toy Story, the item
    assert tm.unnamed_item_rate([rec("Because you enjoyed GoldenEye, try this one.")], titles) == 1.0
    m = tm.explanation_metrics(records, ITEMS, ConstEncoder(), titles)
    assert list(m) == list(tm.METRIC_KEYS)
    assert (m["prompt_copy_rate"], m["self_reference_rate"], m["unfinished_rate"]) == pytest.approx((0.25, 0.25, 0.25))
    # the copy is counted against what the prompt showed: GoldenEye's line copied, but not shown → no copy
    line = "GoldenEye (1995; Action, Adventure, Thriller) is a film you will like as much as Toy Story."
    assert tm.prompt_copy_rate([rec(line, shown=[2])], ITEMS, titles) == 1.0
    assert tm.prompt_copy_rate([rec(line, shown=[3])], ITEMS, titles) == 0.0
