"""Human-eval kit (code/eval/human_eval.py): κ on textbook tables, export → fill → score round trip,
bad sheets, and the HTML page (stdlib parser; headless Chromium when installed)."""

from __future__ import annotations

import csv
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
    sheet, key = read_rows(out / "sheet.csv"), read_rows(out / "key.csv")
    assert list(sheet[0]) == list(he.SHEET_COLUMNS) and list(key[0]) == list(he.KEY_COLUMNS)
    assert len(sheet) == 10 and all(r["preference"] == "" for r in sheet)
    titles = he.display_titles(processed.items)
    assert sheet[0]["item"] == titles[int(key[0]["item_id"])] and re.search(r"\(\d{4}\)$", sheet[0]["item"])
    assert json.loads((out / "manifest.json").read_text())["config"]["system_a"] == "recrl"
    assert {k["set"] for k in key} == {"test_item"}
    assert not any(r["explanation_a"].startswith("slate") for r in sheet)

    r1 = write_rows(tmp_path / "r1.csv", fill(sheet, key, "recrl", "ann"))
    r2 = write_rows(tmp_path / "r2.csv", fill(sheet, key, "recrl", "bob", tie_rows={3, 7}))
    res = he.main(["score", "--key", str(out / "key.csv"), "--sheets", str(r1), str(r2),
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
    assert json.loads((tmp_path / "res.json").read_text())["win_rate_a"] == pytest.approx(0.95)
    assert "win rate of recrl over warm_start (ties count ½): 0.950" in capsys.readouterr().out

    # --system_a flips the point of view
    flipped = he.main(["score", "--key", str(out / "key.csv"), "--sheets", str(r1), str(r2),
                       "--system_a", "warm_start"])
    assert flipped["win_rate_a"] == pytest.approx(0.05)

    # a key.csv already there is kept unless --overwrite
    argv = ["export", "--explanations", str(path), "--out_dir", str(out), "--n", "4", "--dataset", "ml100k"]
    with pytest.raises(InputError, match="--overwrite"):
        he.main(argv)
    he.main(argv + ["--overwrite"])
    assert len(read_rows(out / "key.csv")) == 4
    he.main(argv + ["--overwrite", "--set", "slate"])
    assert {k["set"] for k in read_rows(out / "key.csv")} == {"slate"}
    assert all(r["explanation_a"].startswith("slate") for r in read_rows(out / "sheet.csv"))


def test_default_out_dir_under_experiments(exported):
    path, _, _ = exported
    he.main(["export", "--explanations", str(path), "--n", "2"])
    root = path.parents[3]
    assert len(read_rows(root / "experiments" / "human_eval" / "ml100k" / "sheet.csv")) == 2
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
    sheet, key = read_rows(out / "sheet.csv"), read_rows(out / "key.csv")
    good = write_rows(tmp_path / "good.csv", fill(sheet, key, "recrl", "ann"))
    bad = write_rows(tmp_path / "bad.csv", edit(fill(sheet, key, "recrl", "bob")))
    with pytest.raises(InputError, match=message) as err:
        he.main(["score", "--key", str(out / "key.csv"), "--sheets", str(good), str(bad)])
    assert str(bad) in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        run_cli(he.main, ["score", "--key", str(out / "key.csv"), "--sheets", str(good), str(bad)])
    assert exit_.value.code == 2 and "bad.csv" in capsys.readouterr().err


def test_same_rater_twice_is_an_input_error(exported, tmp_path):
    _, out, _ = exported
    sheet, key = read_rows(out / "sheet.csv"), read_rows(out / "key.csv")
    a = write_rows(tmp_path / "a.csv", fill(sheet, key, "recrl", "ann"))
    b = write_rows(tmp_path / "b.csv", fill(sheet, key, "warm_start", "ann"))
    with pytest.raises(InputError, match="second sheet of rater 'ann'"):
        he.main(["score", "--key", str(out / "key.csv"), "--sheets", str(a), str(b)])


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


def page(tmp_path) -> tuple[Path, list[dict]]:
    rows = explanation_rows()
    rows[0]["text"] = NASTY  # recrl, user 1
    sheet, _ = he.make_sheet(he.pair_records(rows, "recrl", "warm_start", "x"), TITLES, 50, 0, 3)
    path = tmp_path / "sheet.html"
    path.write_text(he.render_html(sheet, "test"), encoding="utf-8")
    return path, sheet


def test_html_has_every_row_radio_group_and_script(tmp_path):
    path, sheet = page(tmp_path)
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
    path, sheet = page(tmp_path)
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
    label, prefs = he.read_sheet(tmp_path / "filled.csv", [{"row_id": r["row_id"]} for r in sheet])
    assert label == "r1" and prefs == {r["row_id"]: "B" for r in sheet}
