"""Human-eval kit (code/eval/human_eval.py): κ, weighted κ and Krippendorff's α on textbook and
hand-computed tables, export → fill → score round trip, the raters/ vs key/ layout, identical pairs and
length balance, the sheet-vs-key hash check, bad sheets, and the HTML page (stdlib parser; headless
Chromium when installed)."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.eval import human_eval as he

# Fleiss (1971) as worked on Wikipedia ("Fleiss' kappa"): 10 subjects, 14 raters, 5 categories;
# P̄ = 0.378, P_e = 0.213, κ = 0.210
FLEISS_TABLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_cohen_kappa_textbook():
    # Wikipedia "Cohen's kappa": 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15 → p_o 0.7, p_e 0.5, κ 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert he.cohen_kappa(a, b) == pytest.approx(0.4)
    assert he.cohen_kappa(["x", "y", "x"], ["x", "y", "x"]) == pytest.approx(1.0)
    assert he.cohen_kappa(["x", "x"], ["x", "x"]) is None  # chance agreement 1: undefined
    with pytest.raises(ValueError):
        he.cohen_kappa(["x"], ["x", "y"])


def test_fleiss_kappa_textbook():
    assert he.fleiss_kappa(np.array(FLEISS_TABLE)) == pytest.approx(0.2099, abs=1e-4)
    # two raters, 4 items: agree, agree, disagree, agree over 2 categories → P̄ = 3/4, p = (5/8, 3/8),
    # P_e = 34/64 → κ = (3/4 − 34/64) / (30/64) = 7/15
    assert he.fleiss_kappa(np.array([[2, 0], [2, 0], [1, 1], [0, 2]])) == pytest.approx(7 / 15)
    assert he.fleiss_kappa(np.array([[2, 0], [2, 0]])) is None
    with pytest.raises(ValueError, match="same number"):
        he.fleiss_kappa(np.array([[2, 0], [1, 2]]))


def test_weighted_kappa_hand_and_textbook():
    # hand: a = (0, 1, 2, 2), b = (0, 2, 2, 1), k = 3, w_ij = |i − j| / 2. Observed cells (0,0) (1,2) (2,2) (2,1),
    # ¼ each → Σ w p = ½·¼ + ½·¼ = ¼. Marginals (¼, ¼, ½) for both → Σ w p_i p_j = 2·(½·1/16 + 1·⅛ + ½·⅛) = 7/16
    # → κ_w = 1 − (1/4) / (7/16) = 3/7
    assert he.weighted_kappa([0, 1, 2, 2], [0, 2, 2, 1], 3) == pytest.approx(3 / 7)
    # with two categories the linear weights are 1 − identity: κ_w is Cohen's κ (Wikipedia's 0.4 example)
    a = [1] * 25 + [0] * 25
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert he.weighted_kappa(a, b, 2) == pytest.approx(0.4)
    assert he.weighted_kappa([0, 1, 2], [0, 1, 2], 3) == pytest.approx(1.0)
    # a one-step miss costs half a two-step miss: (0 vs 1) agrees more than (0 vs 2)
    assert he.weighted_kappa([0, 2, 0, 2], [1, 2, 0, 2], 3) > he.weighted_kappa([0, 2, 0, 2], [2, 2, 0, 2], 3)
    assert he.weighted_kappa([1, 1], [1, 1], 3) is None  # expected disagreement 0
    with pytest.raises(ValueError, match="labels in 0..2"):
        he.weighted_kappa([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="equally long"):
        he.weighted_kappa([0], [0, 1], 3)


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability" (repository.upenn.edu/asc_papers/43):
# 4 observers × 12 units with missing values; published α = 0.743 nominal, 0.815 ordinal, 0.849 interval
NAN = float("nan")
KRIPPENDORFF_2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
                     [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
                     [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
                     [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN]]


def test_krippendorff_alpha_textbook():
    assert he.krippendorff_alpha(KRIPPENDORFF_2011, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert he.krippendorff_alpha(KRIPPENDORFF_2011, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert he.krippendorff_alpha(KRIPPENDORFF_2011, "interval") == pytest.approx(0.849, abs=5e-4)
    # Wikipedia ("Krippendorff's alpha", a computational example): 3 coders × 15 units, nominal α = 0.691
    wiki = [[NAN, NAN, NAN, NAN, NAN, 3, 4, 1, 2, 1, 1, 3, 3, NAN, 3],
            [1, NAN, 2, 1, 3, 3, 4, 3, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
            [NAN, NAN, 2, 1, 3, 4, 4, NAN, 2, 1, 1, 3, 3, NAN, 4]]
    assert he.krippendorff_alpha(wiki, "nominal") == pytest.approx(0.691, abs=5e-4)


def test_krippendorff_alpha_by_hand():
    # raters (0, 1, 2, 2) and (0, 2, 2, 1); every unit has m_u = 2, so each ordered pair counts 1/(2 − 1) = 1.
    # Coincidences: o_00 = 2, o_22 = 2, o_12 = o_21 = 2 → n = (2, 2, 4), n = 8.
    # Interval δ² = (c − k)²: D_o = (2 + 2)·1 / 8 = ½;
    # D_e = 2·(n_0 n_1·1 + n_0 n_2·4 + n_1 n_2·1) / (8·7) = 2·(4 + 32 + 8) / 56 = 11/7 → α = 1 − 7/22 = 15/22
    table = [[0, 1, 2, 2], [0, 2, 2, 1]]
    assert he.krippendorff_alpha(table, "interval") == pytest.approx(15 / 22)
    # nominal δ² = [c ≠ k]: D_o = 4/8; D_e = 2·(4 + 8 + 8) / 56 = 5/7 → α = 1 − 7/10 = 3/10
    assert he.krippendorff_alpha(table, "nominal") == pytest.approx(3 / 10)
    # a unit with one value is not pairable and drops out: adding (NaN, 0) changes nothing
    assert he.krippendorff_alpha([[0, 1, 2, 2, NAN], [0, 2, 2, 1, 0]]) == pytest.approx(15 / 22)
    assert he.krippendorff_alpha([[1, 1, 1], [1, 1, 1]]) is None  # D_e = 0
    assert he.krippendorff_alpha([[0, 2, 1], [0, 2, 1], [0, 2, 1]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more raters"):
        he.krippendorff_alpha([[0, NAN], [NAN, 1]])
    with pytest.raises(ValueError, match="metric"):
        he.krippendorff_alpha(table, "ratio")


def test_win_rate_without_ties_by_hand():
    key = [{"row_id": i, "A": "x", "B": "y"} for i in (1, 2, 3, 4)]
    key[3] = {"row_id": 4, "A": "y", "B": "x"}  # position undone: "B" on row 4 is a vote for x
    sheets = {"r1": {1: "A", 2: "A", 3: "B", 4: "tie"}, "r2": {1: "A", 2: "tie", 3: "B", 4: "B"}}
    res = he.score_judgements(key, sheets, "x", "y", n_boot=2000, seed=0)
    # x wins: r1 rows 1, 2; r2 rows 1, 4 → 4; losses: row 3 twice → 2; ties 2
    assert res["counts"]["x"] == {"win": 4, "tie": 2, "loss": 2}
    assert res["win_rate_a"] == pytest.approx(5 / 8) and res["win_rate_a_no_ties"] == pytest.approx(4 / 6)
    assert res["per_rater"]["r1"]["win_rate_a_no_ties"] == pytest.approx(2 / 3)
    assert res["per_rater"]["r2"]["win_rate_a_no_ties"] == pytest.approx(2 / 3)
    lo, hi = res["win_rate_a_no_ties_ci95"]
    assert 0.0 <= lo < 4 / 6 < hi <= 1.0
    # every row (win, loss): each resample gives exactly ½
    half = he.score_judgements(key[:3], {"r1": {1: "A", 2: "A", 3: "A"}, "r2": {1: "B", 2: "B", 3: "B"}}, "x", "y")
    assert half["win_rate_a_no_ties"] == 0.5 and half["win_rate_a_no_ties_ci95"] == [0.5, 0.5]
    # rows (win) and (tie only): resamples of two rows drawing the tie row twice (P = ¼) have no no-tie rate
    # and are left out; every other resample gives 1
    mixed = he.score_judgements(key[:2], {"r1": {1: "A", 2: "tie"}}, "x", "y", n_boot=4000, seed=1)
    assert mixed["win_rate_a_no_ties"] == 1.0 and mixed["win_rate_a_no_ties_ci95"] == [1.0, 1.0]
    assert mixed["win_rate_a_no_ties_boot_undefined"] == pytest.approx(0.25, abs=0.03)
    assert mixed["win_rate_a"] == pytest.approx(0.75)
    ties = he.score_judgements(key[:2], {"r1": {1: "tie", 2: "tie"}}, "x", "y")
    assert ties["win_rate_a_no_ties"] is None and ties["win_rate_a_no_ties_ci95"] is None
    assert ties["per_rater"]["r1"]["win_rate_a_no_ties"] is None
    assert "(ties left out): n/a [no non-tie judgement]" in he.format_table(ties)


# --- round trip ----------------------------------------------------------------------------------
TITLES = {i: f"Film {i} (199{i % 10})" for i in range(1, 40)}


def explanation_rows(n_pairs: int = 10) -> list[dict]:
    rows = []
    for u in range(1, n_pairs + 1):
        item, history = 20 + u, [u, u + 1, u + 2]
        for system in ("recrl", "warm_start", "base"):
            rows.append({"system": system, "set": "test_item", "user_id": u, "item_id": item,
                         "text": f"{system} explains item {item} to user {u}",
                         "reference": "ref", "reference_source": "template", "history": history, "slate": [item],
                         "q": 0.0, "ctr": 0.0})
    rows.append({**rows[0], "user_id": 99})  # a recrl row without a warm_start partner: not paired
    # the slate set may explain the same (user, item) again: another set, so neither paired nor a duplicate
    rows += [{**r, "set": "slate", "text": "slate " + r["text"]} for r in rows[:6]]
    return rows


def fill(sheet_rows, key_rows, prefer: str, rater: str, tie_rows=()) -> list[dict]:
    """Rater preferring system ``prefer`` on every row except ``tie_rows``."""
    key = {int(k["row_id"]): k for k in key_rows}
    out = []
    for r in sheet_rows:
        rid = int(r["row_id"])
        pref = "tie" if rid in tie_rows else ("A" if key[rid]["A"] == prefer else "B")
        out.append({**r, "preference": pref, "rater": rater})
    return out


def write_rows(path: Path, rows: list[dict]) -> Path:
    he.write_csv(path, he.SHEET_COLUMNS, rows)
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_make_sheet_pairs_and_balances_positions():
    pairs = he.pair_records(explanation_rows(), "recrl", "warm_start", "x.jsonl")
    assert len(pairs) == 10
    sheet, key = he.make_sheet(pairs, TITLES, n=50, seed=0, history_len=2)
    assert [r["row_id"] for r in sheet] == list(range(1, 11))
    assert sum(k["A"] == "warm_start" for k in key) == 5  # exactly ⌊10/2⌋ swapped
    for r, k in zip(sheet, key):
        assert r["explanation_a"] == f"{k['A']} explains item {k['item_id']} to user {k['user_id']}"
        assert r["explanation_b"] == f"{k['B']} explains item {k['item_id']} to user {k['user_id']}"
        u = k["user_id"]
        assert r["history"] == f"{TITLES[u + 1]}; {TITLES[u + 2]}"  # the last 2 of 3
        assert r["item"] == TITLES[20 + u]
    assert he.make_sheet(pairs, TITLES, n=50, seed=0, history_len=2) == (sheet, key)
    assert [k["user_id"] for k in he.make_sheet(pairs, TITLES, n=50, seed=1, history_len=2)[1]] != \
        [k["user_id"] for k in key]
    small, _ = he.make_sheet(pairs, TITLES, n=3, seed=0, history_len=0)
    assert len(small) == 3 and all(r["history"] == "" for r in small)
    with pytest.raises(InputError, match="no common pair"):
        he.pair_records(explanation_rows(), "recrl", "template", "x.jsonl")
    with pytest.raises(InputError, match="two for user 1"):
        he.pair_records(explanation_rows() + [explanation_rows()[1]], "recrl", "warm_start", "x.jsonl")
    slate = he.pair_records(explanation_rows(), "recrl", "warm_start", "x.jsonl", subset="slate")
    assert [(a["user_id"], a["text"][:5]) for a, _ in slate] == [(1, "slate"), (2, "slate")]
    assert len(he.pair_records(explanation_rows(), "recrl", "warm_start", "x.jsonl", subset=None)) == 12
    no_sets = [{k: v for k, v in r.items() if k != "set"} for r in explanation_rows()[:30]]
    assert len(he.pair_records(no_sets, "recrl", "warm_start", "x.jsonl", subset="slate")) == 10


def test_drop_identical_normalises_whitespace_but_not_case():
    pairs = he.pair_records(explanation_rows(), "recrl", "warm_start", "x.jsonl")
    pairs[0][1]["text"] = "  " + pairs[0][0]["text"].replace(" ", "\t\n ") + " "  # same words, other spacing
    pairs[1][1]["text"] = pairs[1][0]["text"]
    pairs[2][1]["text"] = pairs[2][0]["text"].upper()  # case counts: kept
    kept, dropped = he.drop_identical(pairs)
    assert dropped == 2 and kept == pairs[2:]
    assert he.normalise_ws(" a \t b\n\nc ") == "a b c"


def test_pair_sha256_is_canonical():
    canon = json.dumps(["a b", "ç d"], ensure_ascii=False, separators=(",", ":"))  # '["a b","ç d"]'
    want = hashlib.sha256(canon.encode("utf-8")).hexdigest()
    assert he.pair_sha256("a b", "ç d") == want
    assert he.pair_sha256(" a\n b ", "ç  d") == want  # whitespace normalised
    assert he.pair_sha256("ç d", "a b") != want  # A and B swapped
    assert he.pair_sha256("a b", "ç D") != want  # case counts
    assert he.pair_sha256("a", "b c") != he.pair_sha256("a b", "c")  # where one text ends matters
    pairs = he.pair_records(explanation_rows(), "recrl", "warm_start", "x.jsonl")
    sheet, key = he.make_sheet(pairs, TITLES, n=50, seed=0, history_len=2)
    assert [k["pair_sha256"] for k in key] == [he.pair_sha256(r["explanation_a"], r["explanation_b"]) for r in sheet]


def test_length_balance_by_hand():
    sheet = [{"explanation_a": "one two three", "explanation_b": "one"},
             {"explanation_a": "a b", "explanation_b": "a b c d e"},
             {"explanation_a": "x  y", "explanation_b": "x y z w"}]
    key = [{"A": "s", "B": "t"}, {"A": "t", "B": "s"}, {"A": "s", "B": "t"}]
    bal = he.length_balance(sheet, key, "s")
    # shown as A: 3, 2, 2; as B: 1, 5, 4. s: 3, 5, 2; t: 1, 2, 4
    assert bal["shown_as_A"] == pytest.approx(7 / 3) and bal["shown_as_B"] == pytest.approx(10 / 3)
    assert bal["system_a"] == pytest.approx(10 / 3) and bal["system_b"] == pytest.approx(7 / 3)


@pytest.fixture
def exported(ml100k_processed, tmp_path, monkeypatch):
    """A repository root holding the fixture's processed ML-100K and a logs/ml100k/shielded/explanations.jsonl."""
    root = tmp_path / "root"
    (root / "data" / "proc").mkdir(parents=True)
    (root / "data" / "proc" / "ml100k").symlink_to(ml100k_processed.folder)
    monkeypatch.setenv("RECRL_ROOT", str(root))
    path = root / "logs" / "ml100k" / "shielded" / "explanations.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in explanation_rows()))
    out = tmp_path / "he"
    he.main(["export", "--explanations", str(path), "--n", "50", "--seed", "0", "--out_dir", str(out)])
    return path, out, ml100k_processed


def test_export_score_round_trip(exported, tmp_path, capsys):
    path, out, processed = exported
    sheet, key = read_rows(out / "raters" / "sheet.csv"), read_rows(out / "key" / "key.csv")
    assert list(sheet[0]) == list(he.SHEET_COLUMNS) and list(key[0]) == list(he.KEY_COLUMNS)
    assert len(sheet) == 10 and all(r["preference"] == "" for r in sheet)
    titles = he.display_titles(processed.items)
    assert sheet[0]["item"] == titles[int(key[0]["item_id"])] and re.search(r"\(\d{4}\)$", sheet[0]["item"])
    assert json.loads((out / "key" / "manifest.json").read_text())["config"]["system_a"] == "recrl"
    assert {k["set"] for k in key} == {"test_item"}
    assert not any(r["explanation_a"].startswith("slate") for r in sheet)

    r1 = write_rows(tmp_path / "r1.csv", fill(sheet, key, "recrl", "ann"))
    r2 = write_rows(tmp_path / "r2.csv", fill(sheet, key, "recrl", "bob", tie_rows={3, 7}))
    res = he.main(["score", "--key", str(out / "key" / "key.csv"), "--sheets", str(r1), str(r2),
                   "--out", str(tmp_path / "res.json")])
    # 20 judgements: recrl 18 wins, 2 ties → (18 + 1) / 20
    assert res["counts"] == {"recrl": {"win": 18, "tie": 2, "loss": 0}, "warm_start": {"win": 0, "tie": 2, "loss": 18}}
    assert res["win_rate_a"] == pytest.approx(0.95)
    # per-row scores: 8 × 1.0, 2 × 0.75. Upper 2.5%: P(no tie row drawn) = 0.8^10 = 0.11 → 1.0; lower: the
    # 97.5% quantile of Binomial(10, 0.2) tie rows is 5 → 1 − 0.25 · 5/10 = 0.875
    assert res["win_rate_a_ci95"] == pytest.approx([0.875, 1.0])
    # Cohen: p_o = 0.8, p_e = 1.0 · 0.8 → 0. Fleiss: P̄ = 0.8, p = (0.9 recrl, 0.1 tie) → P_e = 0.82 → −1/9
    assert res["agreement"]["cohen_kappa"] == pytest.approx(0.0)
    assert res["agreement"]["fleiss_kappa"] == pytest.approx(-1 / 9)
    assert res["agreement"]["all_agree"] == pytest.approx(0.8)
    assert set(res["per_rater"]) == {"ann", "bob"} and res["per_rater"]["bob"]["win_rate_a"] == pytest.approx(0.9)
    # no tie left: 18 wins, 0 losses → 1, in every resample
    assert res["win_rate_a_no_ties"] == 1.0 and res["win_rate_a_no_ties_ci95"] == [1.0, 1.0]
    # ordinal codes: ann all 2, bob 2 but 1 on rows 3, 7. Weighted κ: Σ w p = 0.2·½ = Σ w p_i p_j → 0.
    # α (interval): o_22 = 16, o_12 = o_21 = 2 → n = (0, 2, 18), n = 20; D_o = 4/20; D_e = 2·2·18/380
    # → α = 1 − 0.2·380/72 = −1/18
    assert res["agreement"]["weighted_kappa_linear"] == pytest.approx(0.0)
    assert res["agreement"]["krippendorff_alpha_interval"] == pytest.approx(-1 / 18)
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["win_rate_a"] == pytest.approx(0.95) and saved["win_rate_a_no_ties_ci95"] == [1.0, 1.0]
    assert saved["agreement"]["krippendorff_alpha_interval"] == pytest.approx(-1 / 18)
    printed = capsys.readouterr().out
    assert "win rate of recrl over warm_start (ties count ½): 0.950" in printed
    assert "win rate of recrl over warm_start (ties left out): 1.000 [95% CI 1.000, 1.000" in printed
    assert "weighted κ (linear) 0.000, Krippendorff's α (interval) -0.056" in printed

    # --system_a flips the point of view
    flipped = he.main(["score", "--key", str(out / "key" / "key.csv"), "--sheets", str(r1), str(r2),
                       "--system_a", "warm_start"])
    assert flipped["win_rate_a"] == pytest.approx(0.05)

    # a key.csv already there is kept unless --overwrite
    argv = ["export", "--explanations", str(path), "--out_dir", str(out), "--n", "4", "--dataset", "ml100k"]
    with pytest.raises(InputError, match="--overwrite"):
        he.main(argv)
    he.main(argv + ["--overwrite"])
    assert len(read_rows(out / "key" / "key.csv")) == 4
    he.main(argv + ["--overwrite", "--set", "slate"])
    assert {k["set"] for k in read_rows(out / "key" / "key.csv")} == {"slate"}
    assert all(r["explanation_a"].startswith("slate") for r in read_rows(out / "raters" / "sheet.csv"))


def neutral_explanations(path: Path, identical_users=()) -> None:
    """Rewrite ``path`` with texts that do not name their system; the two systems' texts are equal for
    ``identical_users`` (up to whitespace)."""
    rows = explanation_rows()
    for r in rows:
        if r["system"] == "warm_start" and r["user_id"] in identical_users:
            r["text"] = f"  Because   you watched film {r['user_id']}.\n"
        else:
            r["text"] = (f"Because you watched film {r['user_id']}." if r["system"] == "recrl" else
                         f"A film like {r['user_id']}, which you liked, and more words here.")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_layout_keeps_systems_out_of_the_raters_folder(exported, tmp_path, capsys):
    path, _, _ = exported
    neutral_explanations(path, identical_users={2, 5, 9})
    out = tmp_path / "he2"
    capsys.readouterr()
    he.main(["export", "--explanations", str(path), "--n", "50", "--out_dir", str(out)])
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["key", "raters"]
    assert sorted(p.name for p in (out / "raters").iterdir()) == ["sheet.csv", "sheet.html"]
    assert sorted(p.name for p in (out / "key").iterdir()) == ["key.csv", "manifest.json"]
    for f in (out / "raters").iterdir():
        text = f.read_text(encoding="utf-8").lower()
        assert "recrl" not in text and "warm_start" not in text, f.name
    m = json.loads((out / "key" / "manifest.json").read_text())
    assert m["config"]["system_a"] == "recrl" and m["config"]["system_b"] == "warm_start"
    assert {k: Path(v["path"]).parent.name for k, v in m["outputs"].items()} == \
        {"sheet": "raters", "html": "raters", "key": "key"}
    # 10 pairs, 3 identical up to whitespace → 7 rows
    assert (m["pairs_available"], m["pairs_identical_dropped"], m["rows"]) == (10, 3, 7)
    assert len(read_rows(out / "raters" / "sheet.csv")) == 7
    assert "10 pairs of recrl and warm_start available, 3 with identical texts dropped" in printed
    # recrl texts have 5 words, warm_start 11; 3 of 7 rows show warm_start as A
    bal = m["length_balance"]
    assert (bal["system_a"], bal["system_b"]) == (5.0, 11.0)
    assert bal["shown_as_A"] == pytest.approx((4 * 5 + 3 * 11) / 7)
    assert bal["shown_as_B"] == pytest.approx((4 * 11 + 3 * 5) / 7)
    assert "recrl 5.0, warm_start 11.0" in printed
    # every pair identical: nothing to rate
    neutral_explanations(path, identical_users=set(range(1, 11)))
    with pytest.raises(InputError, match="all 10 pairs identical"):
        he.main(["export", "--explanations", str(path), "--out_dir", str(tmp_path / "he3")])
    assert not (tmp_path / "he3" / "key").exists()


def test_sheet_must_match_the_keys_hashes(exported, tmp_path, capsys):
    path, out, _ = exported
    key_path = out / "key" / "key.csv"
    sheet, key = read_rows(out / "raters" / "sheet.csv"), read_rows(key_path)
    good = write_rows(tmp_path / "good.csv", fill(sheet, key, "recrl", "ann"))

    def refused(rows, name, match):
        bad = write_rows(tmp_path / name, rows)
        with pytest.raises(InputError, match=match) as err:
            he.main(["score", "--key", str(key_path), "--sheets", str(good), str(bad)])
        assert err.value.path == str(bad)
        return err.value

    # a text edited in row 4: the error names the file, the row, the hash expected and the one found
    edited = [{**r, "explanation_b": r["explanation_b"] + " (edited)"} if r["row_id"] == "4" else r
              for r in fill(sheet, key, "recrl", "bob")]
    err = refused(edited, "edited.csv", "row 4's texts as exported")
    want = next(k["pair_sha256"] for k in key if k["row_id"] == "4")
    got = he.pair_sha256(edited[3]["explanation_a"], edited[3]["explanation_b"])
    assert want[:12] in err.expected and got[:12] in err.found and "1 of 10 rows differ: [4]" in err.found
    assert str(key_path) in err.expected
    # A and B swapped by a spreadsheet
    swapped = [{**r, "explanation_a": r["explanation_b"], "explanation_b": r["explanation_a"]}
               for r in fill(sheet, key, "recrl", "bob")]
    assert "10 of 10 rows differ" in refused(swapped, "swapped.csv", "row 1's texts").found
    # a sheet of another export (other seed: other rows under the same row ids)
    other = tmp_path / "other"
    he.main(["export", "--explanations", str(path), "--seed", "1", "--out_dir", str(other)])
    o_sheet, o_key = read_rows(other / "raters" / "sheet.csv"), read_rows(other / "key" / "key.csv")
    refused(fill(o_sheet, o_key, "recrl", "bob"), "other.csv", "texts as exported")
    # a spreadsheet re-spacing a cell changes no word: accepted
    spaced = [{**r, "explanation_a": "  " + r["explanation_a"].replace(" ", "  ") + "\n"}
              for r in fill(sheet, key, "recrl", "bob")]
    spaced_path = write_rows(tmp_path / "sp.csv", spaced)
    res = he.main(["score", "--key", str(key_path), "--sheets", str(good), str(spaced_path)])
    assert res["n_raters"] == 2
    # the failure reaches the command line as one line and exit 2
    with pytest.raises(SystemExit) as exit_:
        run_cli(he.main, ["score", "--key", str(key_path), "--sheets", str(tmp_path / "edited.csv")])
    assert exit_.value.code == 2 and "edited.csv: expected row 4's texts" in capsys.readouterr().err


def test_key_without_hashes_or_at_the_old_path_is_refused(exported, tmp_path):
    _, out, _ = exported
    sheet, key = read_rows(out / "raters" / "sheet.csv"), read_rows(out / "key" / "key.csv")
    r1 = write_rows(tmp_path / "r1.csv", fill(sheet, key, "recrl", "ann"))
    old = tmp_path / "old_key.csv"
    he.write_csv(old, he.KEY_COLUMNS[:-1], [{c: k[c] for c in he.KEY_COLUMNS[:-1]} for k in key])
    with pytest.raises(InputError, match="pair_sha256 predates the sheet check: re-export"):
        he.main(["score", "--key", str(old), "--sheets", str(r1), "--system_a", "recrl"])
    with pytest.raises(InputError, match="no such file.*key/key.csv"):
        he.main(["score", "--key", str(out / "key.csv"), "--sheets", str(r1)])


def test_default_out_dir_under_experiments(exported):
    path, _, _ = exported
    he.main(["export", "--explanations", str(path), "--n", "2"])
    root = path.parents[3]
    assert len(read_rows(root / "experiments" / "human_eval" / "ml100k" / "raters" / "sheet.csv")) == 2
    assert len(read_rows(root / "experiments" / "human_eval" / "ml100k" / "key" / "key.csv")) == 2
    with pytest.raises(InputError, match="--dataset"):
        he.main(["export", "--explanations", str(path.parents[3] / "elsewhere.jsonl"), "--out_dir", str(root / "x")])


@pytest.mark.parametrize("edit,message", [
    (lambda rows: rows + [{**rows[0], "row_id": "99"}], "unknown row ids \\[99\\]"),
    (lambda rows: [{**r, "preference": "C"} if r["row_id"] == "2" else r for r in rows], "'C' in row 2"),
    (lambda rows: rows[:-1], "rows \\[10\\] missing"),
    (lambda rows: [{**r, "preference": ""} if r["row_id"] == "5" else r for r in rows], "rows \\[5\\] missing"),
    (lambda rows: rows + [rows[0]], "repeated"),
])
def test_bad_sheet_is_an_input_error(exported, tmp_path, capsys, edit, message):
    _, out, _ = exported
    sheet, key = read_rows(out / "raters" / "sheet.csv"), read_rows(out / "key" / "key.csv")
    good = write_rows(tmp_path / "good.csv", fill(sheet, key, "recrl", "ann"))
    bad = write_rows(tmp_path / "bad.csv", edit(fill(sheet, key, "recrl", "bob")))
    with pytest.raises(InputError, match=message) as err:
        he.main(["score", "--key", str(out / "key" / "key.csv"), "--sheets", str(good), str(bad)])
    assert str(bad) in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        run_cli(he.main, ["score", "--key", str(out / "key" / "key.csv"), "--sheets", str(good), str(bad)])
    assert exit_.value.code == 2 and "bad.csv" in capsys.readouterr().err


def test_same_rater_twice_is_an_input_error(exported, tmp_path):
    _, out, _ = exported
    sheet, key = read_rows(out / "raters" / "sheet.csv"), read_rows(out / "key" / "key.csv")
    a = write_rows(tmp_path / "a.csv", fill(sheet, key, "recrl", "ann"))
    b = write_rows(tmp_path / "b.csv", fill(sheet, key, "warm_start", "ann"))
    with pytest.raises(InputError, match="second sheet of rater 'ann'"):
        he.main(["score", "--key", str(out / "key" / "key.csv"), "--sheets", str(a), str(b)])


# --- the HTML page -------------------------------------------------------------------------------
class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.radios, self.rows, self.scripts, self.external = {}, [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("type") == "radio":
            self.radios.setdefault(a["name"], []).append(a["value"])
        if tag == "div" and a.get("class") == "row":
            self.rows.append(a["id"])
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
            self.external += [a["src"]] if "src" in a else []
        if tag in ("link", "img", "iframe"):
            self.external.append(tag)

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


NASTY = 'He said "wow", then </script><b>bold</b> & more'


def page(tmp_path) -> tuple[Path, list[dict], list[dict]]:
    rows = explanation_rows()
    rows[0]["text"] = NASTY  # recrl, user 1
    sheet, key = he.make_sheet(he.pair_records(rows, "recrl", "warm_start", "x"), TITLES, 50, 0, 3)
    path = tmp_path / "sheet.html"
    path.write_text(he.render_html(sheet, "test"), encoding="utf-8")
    return path, sheet, key


def test_html_has_every_row_radio_group_and_script(tmp_path):
    path, sheet, _ = page(tmp_path)
    p = PageParser()
    p.feed(path.read_text(encoding="utf-8"))
    assert p.rows == [f"row-{r['row_id']}" for r in sheet]
    assert p.radios == {f"pref-{r['row_id']}": ["A", "B", "tie"] for r in sheet}
    assert len(p.scripts) == 2 and "function buildCsv" in p.scripts[1] and not p.external
    data = json.loads(p.scripts[0])  # the text survives in the page's data block, unbroken
    assert data == [{c: r[c] for c in ("row_id", "history", "item", "explanation_a", "explanation_b")} for r in sheet]
    assert NASTY in {d["explanation_a"] for d in data} | {d["explanation_b"] for d in data}
    assert html.escape(NASTY) in path.read_text(encoding="utf-8")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH")
def test_html_download_csv_in_headless_chromium(tmp_path):
    """The page's own buildCsv() after answering every row: same columns as sheet.csv, and read_sheet accepts it."""
    path, sheet, key = page(tmp_path)
    probe = """<script>
document.querySelectorAll('input[type=radio][value=B]').forEach(r => { r.checked = true; });
document.querySelector('input[name="comment-2"]').value = 'a "quoted", comment';
document.getElementById('rater').value = 'r1';
document.dispatchEvent(new Event('change'));
const pre = document.createElement('pre'); pre.id = 'csv-out'; pre.textContent = buildCsv();
document.body.appendChild(pre);
</script></body>"""
    path.write_text(path.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(sheet)} of {len(sheet)} rows answered" in res.stdout
    csv_text = html.unescape(re.search(r'<pre id="csv-out">(.*?)</pre>', res.stdout, re.S).group(1))
    (tmp_path / "filled.csv").write_text(csv_text, encoding="utf-8")
    got = read_rows(tmp_path / "filled.csv")
    assert list(got[0]) == list(he.SHEET_COLUMNS)
    assert [r["explanation_a"] for r in got] == [r["explanation_a"] for r in sheet]
    assert {r["preference"] for r in got} == {"B"} and {r["rater"] for r in got} == {"r1"}
    assert got[1]["comment"] == 'a "quoted", comment'
    label, prefs = he.read_sheet(tmp_path / "filled.csv", key)  # the page's texts hash as exported
    assert label == "r1" and prefs == {r["row_id"]: "B" for r in sheet}
