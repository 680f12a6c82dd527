"""Pairwise human evaluation kit: blind A/B sheets of two systems' explanations, and their scoring.

    python code/eval/human_eval.py export --explanations logs/ml100k/shielded/explanations.jsonl \\
        --system_a recrl --system_b warm_start --n 50 --seed 0 --out_dir experiments/human_eval/ml100k
    python code/eval/human_eval.py score --key experiments/human_eval/ml100k/key/key.csv \\
        --sheets rater1.csv rater2.csv --out experiments/human_eval/ml100k/results.json

Layout of ``--out_dir D`` (default experiments/human_eval/<dataset>):

    D/raters/sheet.csv     hand this folder to raters: nothing in it names a system
    D/raters/sheet.html
    D/key/key.csv          keep from raters: row → the system shown as A and B, and the texts' hash
    D/key/manifest.json    names the systems (config), dropped pairs, length balance
    D/results.json         where the command above puts score's results (they name the systems too)

Protocol.
- ``export`` pairs the two systems' explanations of the same (user_id, item_id) in one explanation set
  (``--set``, default test_item: the held-out item explained from train+valid history) and drops pairs
  whose two texts are identical once whitespace is normalised (runs of whitespace → one space, ends
  stripped; case counts, since raters see it): a rater can only call those a tie, and they would dilute
  the win rate towards ½. It samples ``--n`` of the remaining pairs (all when fewer exist) in a seeded
  random order and shows ``system_b`` as "A" in exactly ⌊n/2⌋ rows chosen at random (balanced, so a
  rater's position bias cancels). ``raters/sheet.csv`` holds row_id, history, item, explanation_a,
  explanation_b and empty preference/comment/rater; ``raters/sheet.html`` the same rows as a
  self-contained page with A/B/tie buttons and a "Download CSV" button that saves a filled sheet.csv.
  ``key/key.csv`` maps row_id → set, user, item, the system shown as A and B, and ``pair_sha256``: sha256
  of the UTF-8 JSON ``[explanation_a, explanation_b]`` (whitespace normalised as above, compact
  separators, non-ASCII kept), the texts as shown. ``key/manifest.json`` records the dropped count and
  the length balance (mean words per text shown as A vs as B, and of system_a vs system_b: a length gap
  the raters may reward rather than quality). An existing key.csv is only replaced with ``--overwrite``,
  since sheets already handed out refer to it.
- ``score`` reads one filled sheet per rater; every sheet row's texts must hash to the key's
  ``pair_sha256`` (else the sheet is from another export or was edited: refused), and every row of the
  key must carry a preference A, B or tie (case-insensitive). Win rate of system_a over system_b =
  (wins + ½·ties) / judgements, pooled over raters, and without ties = wins / (wins + losses) (None
  when every judgement is a tie); each 95% interval is a percentile bootstrap over rows (a row's raters
  move together, so rows, not judgements, are the independent units; a resample of tie-only rows has
  no no-tie rate and is left out, its share reported). Agreement on the label
  {system_a, system_b, tie}: Cohen's κ for exactly two raters (Cohen 1960), Fleiss' κ for two or more
  (Fleiss 1971), both None when chance agreement is 1; and on the ordinal label
  system_b < tie < system_a (coded 0, 1, 2): linearly weighted κ for exactly two raters (Cohen 1968) and
  Krippendorff's α with the interval metric for two or more (Krippendorff 2011), which count a tie
  against a win as half a disagreement of a win against a loss, as the win rate does.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from shielded_recrl.common import manifest
from shielded_recrl.common.atomic import atomic_path, write_json, write_text
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.paths import experiments_dir, logs_dir, resolve_user_path

STAGE = "human_eval_export"
SHEET_COLUMNS = ("row_id", "history", "item", "explanation_a", "explanation_b", "preference", "comment", "rater")
KEY_COLUMNS = ("row_id", "set", "user_id", "item_id", "A", "B", "pair_sha256")
PREFERENCES = ("A", "B", "tie")
TIE = "tie"
RATERS_DIR, KEY_DIR = "raters", "key"  # under --out_dir: handed to raters / kept from them


# --- agreement (pure) ------------------------------------------------------------------------------
def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's κ of two raters' labels on the same items: (p_o − p_e) / (1 − p_e), p_e from each
    rater's own label frequencies. None when p_e = 1 (κ undefined)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"two equally long, non-empty label lists expected; found {len(a)} and {len(b)}")
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in set(a) | set(b))
    return None if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' κ from an (items × categories) table of how many raters chose each category; every row
    sums to the same number of raters n ≥ 2. P̄ = mean_i Σ_j c_ij(c_ij − 1) / (n(n − 1)),
    P_e = Σ_j p_j², κ = (P̄ − P_e) / (1 − P_e). None when P_e = 1."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(f"a non-empty items × categories table expected; found shape {c.shape}")
    n = c.sum(1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError(f"every item rated by the same number (≥ 2) of raters expected; "
                         f"found {sorted(set(n.tolist()))}")
    n = n[0]
    p_bar = float(((c * (c - 1)).sum(1) / (n * (n - 1))).mean())
    p_j = c.sum(0) / c.sum()
    p_e = float((p_j ** 2).sum())
    return None if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)


def weighted_kappa(a: Sequence[int], b: Sequence[int], k: int) -> float | None:
    """Cohen's (1968) weighted κ with linear weights for two raters' ordinal labels 0..k−1 on the same
    items: κ_w = 1 − Σ_ij w_ij p_ij / Σ_ij w_ij p_i· p_·j, disagreement weight w_ij = |i − j| / (k − 1),
    p_ij the share of items rater a labelled i and rater b labelled j, p_i· and p_·j their marginals.
    With k = 2 it is Cohen's κ. None when the expected disagreement is 0 (both raters used one same label)."""
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"two equally long, non-empty label lists expected; found shapes {x.shape} and {y.shape}")
    if k < 2 or min(x.min(), y.min()) < 0 or max(x.max(), y.max()) >= k:
        raise ValueError(f"labels in 0..{k - 1} (k ≥ 2) expected; found {sorted(set(x.tolist()) | set(y.tolist()))}")
    p = np.zeros((k, k))
    np.add.at(p, (x, y), 1.0 / len(x))
    w = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]) / (k - 1)
    expected = float((w * np.outer(p.sum(1), p.sum(0))).sum())
    return None if expected <= 0.0 else 1.0 - float((w * p).sum()) / expected


def krippendorff_alpha(data, metric: str = "interval") -> float | None:
    """Krippendorff's α of a (raters × units) table of numeric values, NaN where a rater gave none.

    Following Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability"
    (https://repository.upenn.edu/asc_papers/43), which works this table's example: the coincidence
    matrix o_ck = Σ_u (number of ordered pairs of values (c, k) from different raters in unit u) / (m_u − 1)
    over units with m_u ≥ 2 values (units with fewer are not pairable and drop out); n_c = Σ_k o_ck,
    n = Σ_c n_c; α = 1 − D_o / D_e with D_o = Σ_ck o_ck δ²_ck / n and D_e = Σ_ck n_c n_k δ²_ck / (n(n − 1)).
    ``metric``: "nominal" δ² = [c ≠ k]; "interval" δ² = (c − k)²; "ordinal" δ² = (Σ_{g=c..k} n_g −
    (n_c + n_k)/2)² over the values in sorted order. None when D_e = 0 (every pairable value the same)."""
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"a raters × units table expected; found shape {x.shape}")
    values = np.unique(x[~np.isnan(x)])
    counts = np.stack([(x == v).sum(0) for v in values], 1) if len(values) else np.zeros((x.shape[1], 0))
    m = counts.sum(1)  # values per unit
    pairable = m >= 2
    if not pairable.any():
        raise ValueError("at least one unit with values from two or more raters expected")
    c = counts[pairable].astype(np.float64)
    share = c / (m[pairable, None] - 1)
    o = share.T @ c - np.diag(share.sum(0))  # a value is not paired with itself
    n_c = o.sum(1)
    n = n_c.sum()
    if metric == "nominal":
        d = 1.0 - np.eye(len(values))
    elif metric == "interval":
        d = (values[:, None] - values[None, :]) ** 2
    elif metric == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])  # Σ_{g=c..k} n_g = cum[k+1] − cum[c] for c ≤ k
        i = np.arange(len(values))
        lo, hi = np.minimum.outer(i, i), np.maximum.outer(i, i)
        d = (cum[hi + 1] - cum[lo] - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    else:
        raise ValueError(f"metric nominal, interval or ordinal expected; found {metric!r}")
    d_o = float((o * d).sum()) / n
    d_e = float((np.outer(n_c, n_c) * d).sum()) / (n * (n - 1))
    return None if d_e <= 0.0 else 1.0 - d_o / d_e


# --- export (pure) --------------------------------------------------------------------------------
def pair_records(records: Sequence[Mapping], system_a: str, system_b: str, path,
                 subset: str | None = "test_item") -> list[tuple[Mapping, Mapping]]:
    """(record of system_a, record of system_b) for each (set, user_id, item_id) both systems explained,
    sorted. ``subset``: keep only rows whose ``set`` (evaluate_run.py's "test_item" | "slate") equals it;
    rows without a ``set`` key are always kept, and ``None`` keeps every set. A system with two rows for
    one (set, user_id, item_id) is an InputError."""
    by: dict[str, dict[tuple, Mapping]] = {system_a: {}, system_b: {}}
    for r in records:
        if r["system"] in by and (subset is None or r.get("set", subset) == subset):
            key = (str(r.get("set", "")), int(r["user_id"]), int(r["item_id"]))
            if key in by[r["system"]]:
                raise InputError(path, f"one {r['system']} explanation per (set, user_id, item_id)",
                                 f"two for user {key[1]}, item {key[2]}", "Re-run the evaluation that wrote it.")
            by[r["system"]][key] = r
    common = sorted(by[system_a].keys() & by[system_b].keys())
    if not common:
        found = sorted({str(r["system"]) for r in records})
        raise InputError(path, f"explanations of '{system_a}' and '{system_b}' for the same (user_id, item_id)"
                         + (f" in set '{subset}'" if subset else ""),
                         f"systems {found}; {len(by[system_a])} and {len(by[system_b])} rows, no common pair",
                         "Pass --system_a/--system_b (and --set) values present in the file.")
    return [(by[system_a][k], by[system_b][k]) for k in common]


def normalise_ws(text: str) -> str:
    """Runs of whitespace → one space, ends stripped; case is kept (raters see it)."""
    return " ".join(str(text).split())


def pair_sha256(explanation_a: str, explanation_b: str) -> str:
    """sha256 of the canonical serialisation of a row's text pair as shown: the UTF-8 compact JSON
    ``[a, b]`` of the whitespace-normalised texts (so a spreadsheet that rewraps or trims a cell does not
    trip the check, while any changed word, or A and B swapped, does)."""
    canon = json.dumps([normalise_ws(explanation_a), normalise_ws(explanation_b)], ensure_ascii=False,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def drop_identical(pairs: Sequence[tuple[Mapping, Mapping]]) -> tuple[list[tuple[Mapping, Mapping]], int]:
    """(pairs whose two texts differ after :func:`normalise_ws`, number dropped). Case counts: "Great" and
    "great" are kept as different."""
    kept = [(a, b) for a, b in pairs if normalise_ws(a["text"]) != normalise_ws(b["text"])]
    return kept, len(pairs) - len(kept)


def length_balance(sheet: Sequence[Mapping], key: Sequence[Mapping], system_a: str) -> dict:
    """Mean words per text (whitespace-split) shown as A vs as B, and of system_a vs system_b, over the
    sheet's rows (matched to ``key`` by position). Position balance makes A and B close by design; a gap
    between the systems is a length difference raters may reward instead of quality."""
    words = lambda t: len(str(t).split())  # noqa: E731
    as_a = [words(r["explanation_a"]) for r in sheet]
    as_b = [words(r["explanation_b"]) for r in sheet]
    of_a = [wa if k["A"] == system_a else wb for wa, wb, k in zip(as_a, as_b, key)]
    of_b = [wb if k["A"] == system_a else wa for wa, wb, k in zip(as_a, as_b, key)]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"unit": "mean words per explanation (whitespace-split)", "shown_as_A": mean(as_a),
            "shown_as_B": mean(as_b), "system_a": mean(of_a), "system_b": mean(of_b)}


def make_sheet(pairs: Sequence[tuple[Mapping, Mapping]], titles: Mapping[int, str], n: int, seed: int,
               history_len: int) -> tuple[list[dict], list[dict]]:
    """(sheet rows, key rows) for ``min(n, len(pairs))`` pairs in a seeded random order; exactly ⌊m/2⌋
    rows show system_b as "A"; each key row carries :func:`pair_sha256` of its texts. History = titles of
    the last ``history_len`` items of the user's history (oldest first, "; "-joined), from system_a's record."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(pairs))[:min(n, len(pairs))]
    m = len(chosen)
    swap = rng.permutation(np.arange(m) < m // 2)
    sheet, key = [], []
    for row_id, (k, flip) in enumerate(zip(chosen, swap), start=1):
        rec_a, rec_b = pairs[k]
        first, second = (rec_b, rec_a) if flip else (rec_a, rec_b)
        history = list(rec_a["history"])[-history_len:] if history_len > 0 else []
        sheet.append({"row_id": row_id, "history": "; ".join(titles[int(i)] for i in history),
                      "item": titles[int(rec_a["item_id"])], "explanation_a": str(first["text"]),
                      "explanation_b": str(second["text"]), "preference": "", "comment": "", "rater": ""})
        key.append({"row_id": row_id, "set": str(rec_a.get("set", "")), "user_id": int(rec_a["user_id"]),
                    "item_id": int(rec_a["item_id"]), "A": first["system"], "B": second["system"],
                    "pair_sha256": pair_sha256(sheet[-1]["explanation_a"], sheet[-1]["explanation_b"])})
    return sheet, key


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:1rem auto;
  padding:0 1rem;line-height:1.4}
.row{border:1px solid #bbb;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.pair{display:flex;gap:1rem}.expl{flex:1;background:#f4f4f4;border-radius:4px;padding:.3rem .8rem}
fieldset{border:none;padding:0;margin:.5rem 0}label{margin-right:1.2rem}
.comment{width:60%}#bar{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #ddd}
"""

_JS = """
"use strict";
const COLUMNS = %(columns)s;
const ROWS = JSON.parse(document.getElementById("sheet-data").textContent);
function csvField(v) { return '"' + String(v === undefined || v === null ? "" : v).replace(/"/g, '""') + '"'; }
function answers() {
  return ROWS.map(r => {
    const c = document.querySelector('input[name="pref-' + r.row_id + '"]:checked');
    return c ? c.value : "";
  });
}
function buildCsv() {
  const rater = document.getElementById("rater").value.trim();
  const prefs = answers();
  const lines = [COLUMNS.join(",")];
  ROWS.forEach((r, i) => {
    const comment = document.querySelector('input[name="comment-' + r.row_id + '"]').value;
    const rec = Object.assign({}, r, {preference: prefs[i], comment: comment, rater: rater});
    lines.push(COLUMNS.map(c => csvField(rec[c])).join(","));
  });
  return lines.join("\\r\\n") + "\\r\\n";
}
function updateProgress() {
  const done = answers().filter(v => v !== "").length;
  document.getElementById("progress").textContent = done + " of " + ROWS.length + " rows answered";
}
function download() {
  const rater = document.getElementById("rater").value.trim();
  if (!rater) { alert("Enter your rater id at the top first."); return; }
  const prefs = answers();
  const missing = ROWS.filter((r, i) => prefs[i] === "").map(r => r.row_id);
  if (missing.length && !confirm(missing.length + " rows have no answer (e.g. row " + missing[0] +
      "); the scorer rejects incomplete sheets. Download anyway?")) { return; }
  const blob = new Blob([buildCsv()], {type: "text/csv;charset=utf-8"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "sheet_" + rater.replace(/[^A-Za-z0-9._-]+/g, "_") + ".csv";
  document.body.appendChild(a); a.click(); a.remove();
}
document.addEventListener("change", updateProgress);
document.getElementById("download").addEventListener("click", download);
window.addEventListener("beforeunload", e => {  // answers live only in this page until downloaded
  if (answers().some(v => v !== "")) { e.preventDefault(); e.returnValue = ""; }
});
updateProgress();
"""


def render_html(rows: Sequence[Mapping], heading: str) -> str:
    """A self-contained page (inline CSS/JS, no external resources) for ``rows`` (sheet rows). Radio
    groups are named ``pref-<row_id>`` (values A, B, tie), comments ``comment-<row_id>``; the
    "Download CSV" button writes the sheet.csv columns with preference, comment and rater filled in."""
    esc = html.escape
    parts = [f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(heading)}</title><style>{_CSS}</style></head>
<body>
<h1>{esc(heading)}</h1>
<p>Each row shows what a user watched recently, a film recommended to them, and two explanations of
the recommendation. Pick the explanation that would better help <em>this user</em> decide whether to
watch the film: accurate about the film, relevant to their history, clear. Choose "tie" when neither is
better. The order of A and B is random. When done, press "Download CSV" and send the file back.</p>
<div id="bar"><label>Rater id: <input id="rater" type="text" autocomplete="off"></label>
<span id="progress"></span> <button id="download" type="button">Download CSV</button></div>
"""]
    for r in rows:
        rid = esc(str(r["row_id"]))
        parts.append(f"""<div class="row" id="row-{rid}">
<h2>Row {rid}</h2>
<p><b>Recently watched:</b> {esc(r["history"]) or "<i>(nothing)</i>"}</p>
<p><b>Recommended:</b> {esc(r["item"])}</p>
<div class="pair"><div class="expl"><h3>A</h3><p>{esc(r["explanation_a"])}</p></div>
<div class="expl"><h3>B</h3><p>{esc(r["explanation_b"])}</p></div></div>
<fieldset><legend>Which is better?</legend>
""" + "".join(f'<label><input type="radio" name="pref-{rid}" value="{v}"> {v}</label>' for v in PREFERENCES) + f"""
</fieldset>
<label>Comment (optional): <input type="text" class="comment" name="comment-{rid}"></label>
</div>
""")
    data = [{c: r[c] for c in ("row_id", "history", "item", "explanation_a", "explanation_b")} for r in rows]
    # "<" escaped inside JSON strings so no text can close the <script> element early
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    parts.append(f'<script type="application/json" id="sheet-data">{payload}</script>\n'
                 f"<script>{_JS % {'columns': json.dumps(list(SHEET_COLUMNS))}}</script>\n</body></html>\n")
    return "".join(parts)


# --- score (pure) ----------------------------------------------------------------------------------
def score_judgements(key: Sequence[Mapping], sheets: Mapping[str, Mapping[int, str]], system_a: str,
                     system_b: str, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Win/tie/loss, win rates of ``system_a`` (ties count ½; ties left out) with bootstrap 95% intervals,
    and agreement.

    ``key``: key rows (row_id, A, B); ``sheets``: rater → {row_id: 'A'|'B'|'tie'} covering every key row.
    """
    rows = [int(k["row_id"]) for k in key]
    shown = {int(k["row_id"]): {"A": k["A"], "B": k["B"]} for k in key}
    raters = list(sheets)
    # labels[rater][row] ∈ {system_a, system_b, tie}: the system preferred, position undone
    labels = {rt: [TIE if sheets[rt][r] == TIE else shown[r][sheets[rt][r]] for r in rows] for rt in raters}
    ordinal = {system_b: 0, TIE: 1, system_a: 2}  # system_b < tie < system_a

    def tally(ls: Sequence[str]) -> dict:
        w, t, l = ls.count(system_a), ls.count(TIE), ls.count(system_b)
        return {"win": w, "tie": t, "loss": l, "win_rate_a": (w + 0.5 * t) / len(ls),
                "win_rate_a_no_ties": w / (w + l) if w + l else None}

    pooled = [x for rt in raters for x in labels[rt]]
    total = tally(pooled)
    codes = np.array([[ordinal[x] for x in labels[rt]] for rt in raters])  # raters × rows, 0/1/2
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(n_boot, len(rows)))  # one set of resamples for both rates
    lo, hi = np.quantile((codes.mean(0) / 2)[idx].mean(1), [0.025, 0.975])
    wins, losses = (codes == 2).sum(0)[idx].sum(1), (codes == 0).sum(0)[idx].sum(1)
    defined = wins + losses > 0  # a resample drawing only tie rows has no no-tie rate: left out
    no_ties_ci = (None if total["win_rate_a_no_ties"] is None or not defined.any() else
                  [float(q) for q in np.quantile(wins[defined] / (wins + losses)[defined], [0.025, 0.975])])

    cats = [system_a, system_b, TIE]
    table = np.array([[sum(labels[rt][i] == c for rt in raters) for c in cats] for i in range(len(rows))])
    return {
        "system_a": system_a, "system_b": system_b, "n_rows": len(rows), "n_raters": len(raters),
        "counts": {system_a: {k: total[k] for k in ("win", "tie", "loss")},
                   system_b: {"win": total["loss"], "tie": total["tie"], "loss": total["win"]}},
        "win_rate_a": total["win_rate_a"],
        "win_rate_a_ci95": [float(lo), float(hi)],
        "win_rate_a_no_ties": total["win_rate_a_no_ties"],
        "win_rate_a_no_ties_ci95": no_ties_ci,
        "win_rate_a_no_ties_boot_undefined": float(1.0 - defined.mean()),
        "per_rater": {rt: tally(labels[rt]) for rt in raters},
        "agreement": {
            "cohen_kappa": cohen_kappa(labels[raters[0]], labels[raters[1]]) if len(raters) == 2 else None,
            "fleiss_kappa": fleiss_kappa(table) if len(raters) >= 2 else None,
            "weighted_kappa_linear": weighted_kappa(codes[0], codes[1], 3) if len(raters) == 2 else None,
            "krippendorff_alpha_interval": krippendorff_alpha(codes, "interval") if len(raters) >= 2 else None,
            "all_agree": float(np.mean(table.max(1) == len(raters))),
        },
        "protocol": {
            "win_rate_a": f"(wins + 0.5·ties) / judgements of {system_a} vs {system_b}, pooled over raters",
            "win_rate_a_no_ties": "wins / (wins + losses), pooled over raters; None when every judgement is a tie",
            "win_rate_a_ci95": f"percentile bootstrap over rows, {n_boot} resamples, seed {seed}; the no-tie "
                               "interval uses the same resamples, leaving out those with only ties "
                               "(win_rate_a_no_ties_boot_undefined = their share)",
            "agreement": f"Cohen's κ (exactly 2 raters) and Fleiss' κ on labels {{{system_a}, {system_b}, tie}}; "
                         f"weighted κ (linear, Cohen 1968; 2 raters) and Krippendorff's α (interval, "
                         f"≥ 2 raters) on the ordinal label {system_b} < tie < {system_a} coded 0, 1, 2; "
                         "all_agree = share of rows where every rater gave the same label",
        },
    }


# --- I/O -----------------------------------------------------------------------------------------------
def read_explanations(path: Path) -> list[dict]:
    if not path.exists():
        raise InputError(path, "an explanations.jsonl", "no such file", "Run code/eval/evaluate_run.py first.")
    need = ("system", "user_id", "item_id", "text", "history")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(path, "one JSON object per line", f"line {n}: {err}") from None
        missing = [k for k in need if k not in rec]
        if missing:
            raise InputError(path, f"rows with keys {list(need)}", f"line {n} lacks {missing}")
        out.append(rec)
    return out


def display_titles(items: pd.DataFrame) -> dict[int, str]:
    """item_id → "Title (year)", as raters know films by it; the bare title when the year column is
    absent or not a year (ML-100K has a few "unkonwn" and "V")."""
    years = items["year"].astype(str) if "year" in items else pd.Series([""] * len(items))
    return {int(iid): f"{title} ({year})" if year.isdigit() else title
            for iid, title, year in zip(items["item_id"].astype(int), items["title"].astype(str), years)}


def infer_dataset(path: Path) -> str:
    """``logs/<D>/<tag>/explanations.jsonl`` → D."""
    try:
        return path.resolve().relative_to(logs_dir().resolve()).parts[0]
    except (ValueError, IndexError):
        raise InputError(path, "a path under logs/<dataset>/ (to infer the dataset)", "another folder",
                         "Pass --dataset.") from None


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def _read_csv(path: Path, required: Sequence[str], what: str, fix: str = "") -> list[dict]:
    if not path.exists():
        raise InputError(path, what, "no such file", fix)
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets may add a BOM
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, f"{what} with columns {list(required)}", f"columns {header}", fix)
    return rows


def _row_ids(path: Path, rows: Sequence[Mapping]) -> list[int]:
    ids = []
    for r in rows:
        try:
            ids.append(int(str(r["row_id"]).strip()))
        except ValueError:
            raise InputError(path, "integer row_id values", repr(r["row_id"])) from None
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(path, "each row_id once", f"row ids {dup[:10]} repeated")
    return ids


def read_key(path: Path) -> list[dict]:
    rows = _read_csv(path, KEY_COLUMNS, "a human-eval key.csv",
                     f"Pass the {KEY_DIR}/key.csv that `human_eval.py export` wrote under its --out_dir "
                     "(a key without pair_sha256 predates the sheet check: re-export).")
    for r, rid in zip(rows, _row_ids(path, rows)):
        r["row_id"] = rid
    systems = {r["A"] for r in rows} | {r["B"] for r in rows}
    if not rows or len(systems) != 2:
        raise InputError(path, "rows comparing exactly two systems", f"{len(rows)} rows, systems {sorted(systems)}")
    return rows


def read_sheet(path: Path, key: Sequence[Mapping],
               key_path: Path | str = "the key") -> tuple[str, dict[int, str]]:
    """(rater label, {row_id: 'A'|'B'|'tie'}) of a filled sheet; the label is the sheet's ``rater``
    value when one non-empty value fills the column, else the file path. Every row's texts must hash
    (:func:`pair_sha256`) to its key row's ``pair_sha256``: a sheet from another export, or with a text
    edited or A and B swapped, is an InputError naming the first such row."""
    rows = _read_csv(path, ("row_id", "explanation_a", "explanation_b", "preference"), "a filled human-eval sheet")
    ids = _row_ids(path, rows)
    want = {int(k["row_id"]): k["pair_sha256"] for k in key}
    expected = set(want)
    unknown = sorted(set(ids) - expected)
    if unknown:
        raise InputError(path, f"row ids 1..{len(expected)} from {key_path}", f"unknown row ids {unknown[:10]}",
                         "Use the sheet exported with this key.")
    got = {rid: pair_sha256(r["explanation_a"] or "", r["explanation_b"] or "") for rid, r in zip(ids, rows)}
    bad = [rid for rid in ids if got[rid] != want[rid]]
    if bad:
        r = rows[ids.index(bad[0])]
        raise InputError(path, f"row {bad[0]}'s texts as exported with {key_path} "
                         f"(pair_sha256 {want[bad[0]][:12]}…)",
                         f"pair_sha256 {got[bad[0]][:12]}… (explanation_a {str(r['explanation_a'])[:60]!r}); "
                         f"{len(bad)} of {len(ids)} rows differ: {bad[:10]}",
                         "The sheet comes from another export or its texts were edited: score it with the key of "
                         "the export it came from, or have the rater redo this export's raters/ sheet.")
    prefs = {}
    for rid, r in zip(ids, rows):
        v = str(r["preference"] or "").strip()
        canon = {p.lower(): p for p in PREFERENCES}.get(v.lower())
        if v and canon is None:
            raise InputError(path, f"preference one of {list(PREFERENCES)}", f"{v!r} in row {rid}")
        if canon:
            prefs[rid] = canon
    missing = sorted(expected - prefs.keys())
    if missing:
        raise InputError(path, f"a preference in all {len(expected)} rows", f"{len(expected) - len(missing)} "
                         f"answered; rows {missing[:10]} missing or empty", "Ask the rater to finish the sheet.")
    raters = {str(r.get("rater") or "").strip() for r in rows}
    label = raters.pop() if len(raters) == 1 and "" not in raters else str(path)
    return label, prefs


def format_table(res: Mapping) -> str:
    a, b = res["system_a"], res["system_b"]
    lo, hi = res["win_rate_a_ci95"]
    lines = [f"{res['n_rows']} rows × {res['n_raters']} raters", "| system | win | tie | loss |", "|---|---|---|---|"]
    lines += [f"| {s} | {c['win']} | {c['tie']} | {c['loss']} |" for s, c in res["counts"].items()]
    lines.append(f"win rate of {a} over {b} (ties count ½): {res['win_rate_a']:.3f} "
                 f"[95% CI {lo:.3f}, {hi:.3f}; bootstrap over rows]")
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    ci = res["win_rate_a_no_ties_ci95"]
    lines.append(f"win rate of {a} over {b} (ties left out): {fmt(res['win_rate_a_no_ties'])} "
                 + (f"[95% CI {ci[0]:.3f}, {ci[1]:.3f}; bootstrap over rows]" if ci else "[no non-tie judgement]"))
    ag = res["agreement"]
    lines.append(f"agreement: Cohen's κ {fmt(ag['cohen_kappa'])}, Fleiss' κ {fmt(ag['fleiss_kappa'])}, "
                 f"all raters agree on {ag['all_agree']:.3f} of rows")
    lines.append(f"ordinal agreement ({b} < tie < {a}): weighted κ (linear) {fmt(ag['weighted_kappa_linear'])}, "
                 f"Krippendorff's α (interval) {fmt(ag['krippendorff_alpha_interval'])}")
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> None:
    from shielded_recrl.dataset.processed import load_processed

    started = time.time()
    path = resolve_user_path(args.explanations)
    dataset = args.dataset or infer_dataset(path)
    out_dir = resolve_user_path(args.out_dir) if args.out_dir else experiments_dir() / "human_eval" / dataset
    raters_dir, key_dir = out_dir / RATERS_DIR, out_dir / KEY_DIR  # layout: module docstring
    if (key_dir / "key.csv").exists() and not args.overwrite:
        raise InputError(key_dir / "key.csv", "no existing key (sheets handed out refer to it)", "one",
                         "Pass --overwrite to replace it, or choose another --out_dir.")
    if args.system_a == args.system_b:
        raise InputError(path, "two different systems", f"--system_a = --system_b = {args.system_a}")
    titles = display_titles(load_processed(dataset).items)
    all_pairs = pair_records(read_explanations(path), args.system_a, args.system_b, path, args.set or None)
    pairs, n_identical = drop_identical(all_pairs)  # a rater could only call them a tie
    if not pairs:
        raise InputError(path, f"pairs whose {args.system_a} and {args.system_b} texts differ",
                         f"all {n_identical} pairs identical once whitespace is normalised",
                         "Check that the two systems are really different (e.g. not the same adapter).")
    ids = {int(i) for a, _ in pairs for i in [a["item_id"], *a["history"]]}
    if ids - titles.keys():
        raise InputError(path, f"item ids of the {dataset} catalogue", f"ids {sorted(ids - titles.keys())[:10]}",
                         "Pass the --dataset the explanations were made on.")
    sheet, key = make_sheet(pairs, titles, args.n, args.seed, args.history_len)
    balance = length_balance(sheet, key, args.system_a)
    files = {"sheet": raters_dir / "sheet.csv", "html": raters_dir / "sheet.html", "key": key_dir / "key.csv"}
    write_csv(files["sheet"], SHEET_COLUMNS, sheet)
    write_text(files["html"], render_html(sheet, f"Which explanation is better? ({dataset}, {len(sheet)} rows)"))
    write_csv(files["key"], KEY_COLUMNS, key)
    config = {k: getattr(args, k) for k in ("system_a", "system_b", "set", "n", "seed", "history_len")}
    extra = {"pairs_available": len(all_pairs), "pairs_identical_dropped": n_identical, "rows": len(sheet),
             "length_balance": balance}
    manifest.write(key_dir, manifest.build(STAGE, config={**config, "dataset": dataset}, inputs={"explanations": path},
                                           outputs=files, seed=args.seed, started=started, extra=extra))
    print(f"{len(sheet)} rows ({len(all_pairs)} pairs of {args.system_a} and {args.system_b} available, "
          f"{n_identical} with identical texts dropped)\n"
          f"  hand to raters: {raters_dir}/ ({files['sheet'].name}, {files['html'].name})\n"
          f"  keep from raters: {key_dir}/ ({files['key'].name}, {manifest.MANIFEST})\n"
          f"  mean words shown as A {balance['shown_as_A']:.1f}, as B {balance['shown_as_B']:.1f}; "
          f"{args.system_a} {balance['system_a']:.1f}, {args.system_b} {balance['system_b']:.1f}")


def score(args: argparse.Namespace) -> dict:
    key_path = resolve_user_path(args.key)  # <out_dir>/key/key.csv; its manifest.json lies next to it
    key = read_key(key_path)
    systems = sorted({k["A"] for k in key} | {k["B"] for k in key})
    system_a = args.system_a
    if system_a is None:
        m = manifest.read(key_path.parent, STAGE)
        system_a = m["config"]["system_a"]
    if system_a not in systems:
        raise InputError(key_path, f"system '{system_a}' among the key's systems", str(systems), "Check --system_a.")
    system_b = next(s for s in systems if s != system_a)
    sheets: dict[str, dict[int, str]] = {}
    for p in map(resolve_user_path, args.sheets):
        label, prefs = read_sheet(p, key, key_path)
        if label in sheets:
            raise InputError(p, "one sheet per rater", f"a second sheet of rater '{label}'")
        sheets[label] = prefs
    res = score_judgements(key, sheets, system_a, system_b, args.n_boot, args.seed)
    res["sheets"] = {label: str(p) for label, p in zip(sheets, args.sheets)}
    print(format_table(res))
    if args.out:
        write_json(resolve_user_path(args.out), res)
    return res


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write blind A/B sheets (csv + html) and their key")
    e.add_argument("--explanations", required=True, help="explanations.jsonl with rows of both systems")
    e.add_argument("--system_a", default="recrl", help="the system whose win rate is reported")
    e.add_argument("--system_b", default="warm_start", help="the system it is compared with")
    e.add_argument("--set", default="test_item",
                   help="evaluate_run.py's explanation set to sample: test_item (held-out item, train+valid "
                        "history) or slate; '' = every set; ignored for rows without a 'set' key")
    e.add_argument("--n", type=int, default=50, help="rows to sample (all pairs when fewer exist)")
    e.add_argument("--seed", type=int, default=0, help="seed of the row sample, order and A/B assignment")
    e.add_argument("--history_len", type=int, default=10, help="most recent history titles shown per row")
    e.add_argument("--dataset", default=None, help="processed dataset for titles (default: from logs/<D>/…)")
    e.add_argument("--out_dir", default=None, help=f"output folder, gets {RATERS_DIR}/ (for raters) and {KEY_DIR}/ "
                                                   "(default: experiments/human_eval/<dataset>)")
    e.add_argument("--overwrite", action="store_true", help=f"replace an existing {KEY_DIR}/key.csv in --out_dir")
    s = sub.add_parser("score", help="score filled sheets against the key")
    s.add_argument("--key", required=True, help=f"{KEY_DIR}/key.csv written by export under its --out_dir")
    s.add_argument("--sheets", nargs="+", required=True, help="one filled sheet per rater")
    s.add_argument("--system_a", default=None,
                   help="system whose win rate is reported (default: export's --system_a, from manifest.json "
                        "next to the key)")
    s.add_argument("--n_boot", type=int, default=10_000, help="bootstrap resamples for the 95%% interval")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--out", default=None, help="write the results as JSON here (atomically)")
    args = p.parse_args(argv)
    if args.command == "export":
        if args.n < 1 or args.history_len < 0:
            p.error("--n must be ≥ 1 and --history_len ≥ 0")
        return export(args)
    if args.n_boot < 1:
        p.error("--n_boot must be ≥ 1")
    return score(args)


if __name__ == "__main__":
    run_cli(main)
