"""Pairwise human evaluation kit: blind A/B sheets of two systems' explanations, and their scoring.

    python code/eval/human_eval.py export --explanations logs/ml100k/shielded/explanations.jsonl \\
        --system_a recrl --system_b warm_start --n 50 --seed 0 --out_dir experiments/human_eval/ml100k
    python code/eval/human_eval.py score --key experiments/human_eval/ml100k/key.csv \\
        --sheets rater1.csv rater2.csv --out experiments/human_eval/ml100k/results.json

Protocol.
- ``export`` pairs the two systems' explanations of the same (user_id, item_id) in one explanation set
  (``--set``, default test_item: the held-out item explained from train+valid history), samples ``--n`` pairs
  (all when fewer exist) in a seeded random order, and shows ``system_b`` as "A" in exactly ⌊n/2⌋ rows
  chosen at random (balanced, so a rater's position bias cancels). It writes ``sheet.csv`` (what raters
  see: row_id, history, item, explanation_a, explanation_b, empty preference/comment/rater),
  ``sheet.html`` (the same rows as a self-contained page with A/B/tie buttons and a "Download CSV"
  button that saves a filled sheet.csv), ``key.csv`` (row_id → set, user, item and the system shown as A
  and B: keep it from raters) and ``manifest.json``. An existing key.csv is only replaced with
  ``--overwrite``, since sheets already handed out refer to it.
- ``score`` reads one filled sheet per rater; every row of the key must carry a preference A, B or
  tie (case-insensitive). Win rate of system_a over system_b = (wins + ½·ties) / judgements, pooled
  over raters; its 95% interval is a percentile bootstrap over rows (a row's raters move together,
  so rows, not judgements, are the independent units). Agreement is on the label
  {system_a, system_b, tie}: Cohen's κ for exactly two raters (Cohen 1960), Fleiss' κ for two or more
  (Fleiss 1971); both are None when chance agreement is 1 (every rater gave one same label).
"""

from __future__ import annotations

import argparse
import csv
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
KEY_COLUMNS = ("row_id", "set", "user_id", "item_id", "A", "B")
PREFERENCES = ("A", "B", "tie")
TIE = "tie"


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


def make_sheet(pairs: Sequence[tuple[Mapping, Mapping]], titles: Mapping[int, str], n: int, seed: int,
               history_len: int) -> tuple[list[dict], list[dict]]:
    """(sheet rows, key rows) for ``min(n, len(pairs))`` pairs in a seeded random order; exactly ⌊m/2⌋
    rows show system_b as "A". History = titles of the last ``history_len`` items of the user's history
    (oldest first, "; "-joined), taken from system_a's record."""
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
                    "item_id": int(rec_a["item_id"]),
                    "A": first["system"], "B": second["system"]})
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
    """Win/tie/loss, win rate of ``system_a`` with a bootstrap 95% interval, and agreement.

    ``key``: key rows (row_id, A, B); ``sheets``: rater → {row_id: 'A'|'B'|'tie'} covering every key row.
    """
    rows = [int(k["row_id"]) for k in key]
    shown = {int(k["row_id"]): {"A": k["A"], "B": k["B"]} for k in key}
    raters = list(sheets)
    # labels[rater][row] ∈ {system_a, system_b, tie}: the system preferred, position undone
    labels = {rt: [TIE if sheets[rt][r] == TIE else shown[r][sheets[rt][r]] for r in rows] for rt in raters}
    value = {system_a: 1.0, TIE: 0.5, system_b: 0.0}

    def tally(ls: Sequence[str]) -> dict:
        w, t, l = ls.count(system_a), ls.count(TIE), ls.count(system_b)
        return {"win": w, "tie": t, "loss": l, "win_rate_a": (w + 0.5 * t) / len(ls)}

    pooled = [x for rt in raters for x in labels[rt]]
    total = tally(pooled)
    per_row = np.array([[value[labels[rt][i]] for rt in raters] for i in range(len(rows))]).mean(1)
    rng = np.random.default_rng(seed)
    boot = per_row[rng.integers(0, len(rows), size=(n_boot, len(rows)))].mean(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])

    cats = [system_a, system_b, TIE]
    table = np.array([[sum(labels[rt][i] == c for rt in raters) for c in cats] for i in range(len(rows))])
    return {
        "system_a": system_a, "system_b": system_b, "n_rows": len(rows), "n_raters": len(raters),
        "counts": {system_a: {k: total[k] for k in ("win", "tie", "loss")},
                   system_b: {"win": total["loss"], "tie": total["tie"], "loss": total["win"]}},
        "win_rate_a": total["win_rate_a"],
        "win_rate_a_ci95": [float(lo), float(hi)],
        "per_rater": {rt: tally(labels[rt]) for rt in raters},
        "agreement": {
            "cohen_kappa": cohen_kappa(labels[raters[0]], labels[raters[1]]) if len(raters) == 2 else None,
            "fleiss_kappa": fleiss_kappa(table) if len(raters) >= 2 else None,
            "all_agree": float(np.mean(table.max(1) == len(raters))),
        },
        "protocol": {
            "win_rate_a": f"(wins + 0.5·ties) / judgements of {system_a} vs {system_b}, pooled over raters",
            "win_rate_a_ci95": f"percentile bootstrap over rows, {n_boot} resamples, seed {seed}",
            "agreement": "labels {system_a, system_b, tie}; Cohen's κ only for exactly 2 raters; "
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


def _read_csv(path: Path, required: Sequence[str], what: str) -> list[dict]:
    if not path.exists():
        raise InputError(path, what, "no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets may add a BOM
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, f"{what} with columns {list(required)}", f"columns {header}")
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
    rows = _read_csv(path, KEY_COLUMNS, "a human-eval key.csv")
    for r, rid in zip(rows, _row_ids(path, rows)):
        r["row_id"] = rid
    systems = {r["A"] for r in rows} | {r["B"] for r in rows}
    if not rows or len(systems) != 2:
        raise InputError(path, "rows comparing exactly two systems", f"{len(rows)} rows, systems {sorted(systems)}")
    return rows


def read_sheet(path: Path, key: Sequence[Mapping]) -> tuple[str, dict[int, str]]:
    """(rater label, {row_id: 'A'|'B'|'tie'}) of a filled sheet; the label is the sheet's ``rater``
    value when one non-empty value fills the column, else the file path."""
    rows = _read_csv(path, ("row_id", "preference"), "a filled human-eval sheet")
    ids = _row_ids(path, rows)
    expected = {int(k["row_id"]) for k in key}
    unknown = sorted(set(ids) - expected)
    if unknown:
        raise InputError(path, f"row ids 1..{len(expected)} from the key", f"unknown row ids {unknown[:10]}",
                         "Use the sheet exported with this key.")
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
    ag = res["agreement"]
    lines.append(f"agreement: Cohen's κ {fmt(ag['cohen_kappa'])}, Fleiss' κ {fmt(ag['fleiss_kappa'])}, "
                 f"all raters agree on {ag['all_agree']:.3f} of rows")
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> None:
    from shielded_recrl.dataset.processed import load_processed

    started = time.time()
    path = resolve_user_path(args.explanations)
    dataset = args.dataset or infer_dataset(path)
    out_dir = resolve_user_path(args.out_dir) if args.out_dir else experiments_dir() / "human_eval" / dataset
    if (out_dir / "key.csv").exists() and not args.overwrite:
        raise InputError(out_dir / "key.csv", "no existing key (sheets handed out refer to it)", "one",
                         "Pass --overwrite to replace it, or choose another --out_dir.")
    if args.system_a == args.system_b:
        raise InputError(path, "two different systems", f"--system_a = --system_b = {args.system_a}")
    titles = display_titles(load_processed(dataset).items)
    pairs = pair_records(read_explanations(path), args.system_a, args.system_b, path, args.set or None)
    ids = {int(i) for a, _ in pairs for i in [a["item_id"], *a["history"]]}
    if ids - titles.keys():
        raise InputError(path, f"item ids of the {dataset} catalogue", f"ids {sorted(ids - titles.keys())[:10]}",
                         "Pass the --dataset the explanations were made on.")
    sheet, key = make_sheet(pairs, titles, args.n, args.seed, args.history_len)
    files = {"sheet": out_dir / "sheet.csv", "key": out_dir / "key.csv", "html": out_dir / "sheet.html"}
    write_csv(files["sheet"], SHEET_COLUMNS, sheet)
    write_csv(files["key"], KEY_COLUMNS, key)
    write_text(files["html"], render_html(sheet, f"Which explanation is better? ({dataset}, {len(sheet)} rows)"))
    config = {k: getattr(args, k) for k in ("system_a", "system_b", "set", "n", "seed", "history_len")}
    manifest.write(out_dir, manifest.build(STAGE, config={**config, "dataset": dataset}, inputs={"explanations": path},
                                           outputs=files, seed=args.seed, started=started,
                                           extra={"pairs_available": len(pairs), "rows": len(sheet)}))
    print(f"{len(sheet)} rows ({len(pairs)} pairs of {args.system_a} and {args.system_b} available) → "
          f"{files['sheet']}, {files['html']}; key (keep from raters) → {files['key']}")


def score(args: argparse.Namespace) -> dict:
    key_path = resolve_user_path(args.key)
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
        label, prefs = read_sheet(p, key)
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
    e.add_argument("--out_dir", default=None, help="output folder (default: experiments/human_eval/<dataset>)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing key.csv in --out_dir")
    s = sub.add_parser("score", help="score filled sheets against the key")
    s.add_argument("--key", required=True, help="key.csv written by export")
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
