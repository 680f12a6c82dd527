"""Aggregate every PPO run into one CSV, a LaTeX table and figures (DESIGN.md §2 "eval", §5).

    python code/eval/aggregate_main.py --runs_dir logs --out_csv experiments/aggregate_results.csv \
        --out_dir experiments/figs [--datasets ml100k] [--tags shielded no_projection frozen]

Run discovery: a run is a folder ``<runs_dir>/<D>/<tag>/`` holding ``summary.json``, ``eval.json``, or a
``metrics.jsonl`` with at least one PPO row (a row with ``env/reward``). That rule leaves out the other
stages' log folders that sit next to the runs: ``logs/<D>/ranker`` and ``logs/<D>/lora_init`` write a
``metrics.jsonl`` without ``env/reward``; ``logs/smoke`` holds no such files. Hidden folders (atomic
temporaries) are skipped. One row per dataset × tag; ``--tags`` both filters and lists the expected runs:
an expected tag without a run folder is a row with status ``missing``.

Where each column comes from (one source each; an absent file or key leaves the cell empty, printed as
missing, never filled in):
- ``metrics.jsonl`` (one row per PPO step; a step logged twice after a resume keeps its last row, as in
  the trainer's summary): ``ctr_first``/``ctr_last`` (``env/ctr``: the step's freshly drawn training users),
  ``panel_step_last``, ``panel_dq_last``, ``panel_dq_se_last``, ``panel_dctr_pp_last``,
  ``panel_dctr_pp_se_last`` (the last row with ``panel/*`` keys: policy − warm start on the fixed validation
  panel, paired SE; empty for a run trained without ``--panel_users``) and the figures' curves.
- ``summary.json``: ``mode`` (else ``eval.json``'s), ``steps``, ``stop_reason``, ``reward_first``,
  ``reward_last``, ``kl_last``, ``val_ndcg_orig``, ``val_ndcg_last``, ``val_ndcg_drift`` (last − orig: the
  live monitor's validation NDCG@10, full ranking with seen items masked), ``top10_overlap_last``.
- ``eval.json`` (evaluate_run.py): ``<protocol>/<metric>/{orig,run,diff,diff_se}`` for full_masked
  ndcg@10 and hr@10 and sampled100 ndcg@10, ``top10_overlap``, ``kendall_tau``, ``max_score_change``,
  ``recrl/<metric>`` for the trained explainer's reference-free metrics (``systems``: USR, distinct-n,
  genre mention/precision/recall, hallucination rate, length, CTR, q), ``recrl/<source>/<metric>`` for
  its reference-based ones per reference source (``by_source``; BLEU, ROUGE, embed_sim are never pooled
  over sources), where ``<source>`` is ``template_fidelity`` for template references (built from item
  metadata; the warm start is trained on the same templates, so these numbers measure template fidelity)
  and ``review`` for review references; ``.../vs_warm_start/{diff,lo,hi}``: recrl − warm start with its
  95% paired bootstrap interval over users (``text_vs_warm_start[_all]``), ``recrl/ctr_lift_pp`` (over
  the warm start). Columns of a reference source the run's eval.json does not have stay empty and are not
  listed as missing.
- ``audit.json`` (the run's copy of the safety report, code/audit): ``toxicity_mean`` = ``toxicity.mean``,
  ``toxicity_p95`` = ``toxicity.p95``, ``gender_gap`` = ``bias.gender_gap``, ``gini_delta`` =
  ``popularity.gini_delta``, ``privacy_leak_rate`` = ``privacy.leak_rate`` (the values the policy
  thresholds are checked against; null where the audit could not measure one), ``audit_verdict`` =
  ``verdict`` ("pass"/"fail").

Status: ``complete`` when all four files exist, ``partial: no eval.json, no audit.json`` naming the absent
ones, ``missing`` when the folder does not exist. τ sweep runs are tagged ``tau<energy>`` (``tau0.95``);
when a dataset has such runs, a trade-off figure plots their ranking change against the last panel Δq and
ΔCTR (when every τ run has a panel; else against the last step's training reward and CTR, so labelled).

Figures per dataset: the fixed validation panel (Δq and ΔCTR vs the warm start ± 1.96 paired SE; the panel
size N from the run's checkpoint ``config.json``, ``panel_users``), KL, and the validation NDCG@10 drift
(± 1.96 paired SE where logged). A figure without data is skipped with a printed note.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shielded_recrl.common import manifest
from shielded_recrl.common.atomic import atomic_path, write_text
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.paths import resolve_user_path
from shielded_recrl.eval import figures
from shielded_recrl.trainer import run_folder

RUN_FILES = ("metrics.jsonl", "summary.json", "eval.json", "audit.json")
RANK_KEYS = ("full_masked/ndcg@10", "full_masked/hr@10", "sampled100/ndcg@10")
RANK_PARTS = ("orig", "run", "diff", "diff_se")
SYSTEM = "recrl"  # the trained explainer's name in eval.json "systems"
# eval.json "systems" (reference-free: text_metrics.REFERENCE_FREE_KEYS + the simulator's)
SYSTEM_METRICS = ("usr", "distinct1", "distinct2", "genre_mention", "genre_named_rate", "genre_precision",
                  "genre_recall", "hallucination_rate", "mean_len", "ctr", "q")
# eval.json "by_source" key → the column label: on template references overlap is template fidelity
SOURCES = {"template": "template_fidelity", "review": "review"}
SOURCE_TITLE = {"template": "template fidelity", "review": "review refs"}
SOURCE_METRICS = ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "embed_sim")  # text_metrics.REFERENCE_KEYS
CI_SOURCE_METRICS = ("bleu4", "rougeL", "embed_sim")  # text_vs_warm_start[source]
CI_FREE_METRICS = ("distinct1", "distinct2", "genre_mention", "genre_precision", "genre_recall")  # ..._all
CI_PARTS = ("diff", "lo", "hi")
TAU_TAG = re.compile(r"^tau(\d+(?:\.\d+)?)$")
MISSING_TEX = "—"


@dataclass
class Run:
    """The parsed files of one run folder; an absent file is None."""
    folder: Path
    metrics: list[dict] | None
    summary: dict | None
    eval: dict | None
    audit: dict | None

    def source(self, name: str):
        return {"metrics.jsonl": self.metrics, "summary.json": self.summary, "eval.json": self.eval,
                "audit.json": self.audit}[name]


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def _first(rows: list[dict], key: str):
    s = _series(rows, key)
    return s[0][1] if s else None


def _last(rows: list[dict], key: str):
    s = _series(rows, key)
    return s[-1][1] if s else None


def _panel_last(rows: list[dict], key: str):
    panel = [r for r in rows if r.get("panel/dq") is not None]
    return panel[-1].get(key) if panel else None


def _drift(s: dict):
    last, orig = s.get("val_ndcg_last"), s.get("val_ndcg_orig")
    return None if last is None or orig is None else last - orig


# (column, source file, extractor of the parsed source); the identity columns come first.
COLUMNS: list[tuple[str, str, Callable[[Any], Any]]] = [
    ("steps", "summary.json", lambda s: s.get("steps")),
    ("stop_reason", "summary.json", lambda s: s.get("stop_reason")),
    ("reward_first", "summary.json", lambda s: s.get("reward_first")),
    ("reward_last", "summary.json", lambda s: s.get("reward_last")),
    ("ctr_first", "metrics.jsonl", lambda rows: _first(rows, "env/ctr")),
    ("ctr_last", "metrics.jsonl", lambda rows: _last(rows, "env/ctr")),
    ("panel_step_last", "metrics.jsonl", lambda rows: _panel_last(rows, "step")),
    *[(f"panel_{k}_last", "metrics.jsonl", lambda rows, k=k: _panel_last(rows, f"panel/{k}"))
      for k in ("dq", "dq_se", "dctr_pp", "dctr_pp_se")],
    ("kl_last", "summary.json", lambda s: s.get("kl_last")),
    ("val_ndcg_orig", "summary.json", lambda s: s.get("val_ndcg_orig")),
    ("val_ndcg_last", "summary.json", lambda s: s.get("val_ndcg_last")),
    ("val_ndcg_drift", "summary.json", _drift),
    ("top10_overlap_last", "summary.json", lambda s: s.get("top10_overlap_last")),
    ("eval_step", "eval.json", lambda e: e.get("step")),
    ("eval_n_users", "eval.json", lambda e: e.get("n_users")),
    *[(f"{k}/{part}", "eval.json", lambda e, k=k, part=part: _get(e, "ranking", part, k))
      for k in RANK_KEYS for part in RANK_PARTS],
    *[(name, "eval.json", lambda e, name=name: _get(e, "ranking", name))
      for name in ("top10_overlap", "kendall_tau", "max_score_change")],
    *[(f"{SYSTEM}/{m}", "eval.json", lambda e, m=m: _get(e, "systems", SYSTEM, m)) for m in SYSTEM_METRICS],
    *[(f"{SYSTEM}/{label}/{m}", "eval.json", lambda e, src=src, m=m: _get(e, "by_source", src, SYSTEM, m))
      for src, label in SOURCES.items() for m in SOURCE_METRICS],
    *[(f"{SYSTEM}/{label}/{m}/vs_warm_start/{part}", "eval.json",
       lambda e, src=src, m=m, part=part: _get(e, "text_vs_warm_start", src, SYSTEM, m, part))
      for src, label in SOURCES.items() for m in CI_SOURCE_METRICS for part in CI_PARTS],
    *[(f"{SYSTEM}/{m}/vs_warm_start/{part}", "eval.json",
       lambda e, m=m, part=part: _get(e, "text_vs_warm_start_all", SYSTEM, m, part))
      for m in CI_FREE_METRICS for part in CI_PARTS],
    (f"{SYSTEM}/ctr_lift_pp", "eval.json", lambda e: _get(e, "ctr_lift_pp", SYSTEM)),
    ("toxicity_mean", "audit.json", lambda a: _get(a, "toxicity", "mean")),
    ("toxicity_p95", "audit.json", lambda a: _get(a, "toxicity", "p95")),
    ("gender_gap", "audit.json", lambda a: _get(a, "bias", "gender_gap")),
    ("gini_delta", "audit.json", lambda a: _get(a, "popularity", "gini_delta")),
    ("privacy_leak_rate", "audit.json", lambda a: _get(a, "privacy", "leak_rate")),
    ("audit_verdict", "audit.json", lambda a: a.get("verdict")),
]
IDENTITY = ("dataset", "tag", "mode", "status")
HEADER = [*IDENTITY, *(c for c, _, _ in COLUMNS)]


# ---------------------------------------------------------------- discovery and parsing
def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, "a JSON object", f"invalid JSON ({err})", "Rerun the stage that writes it.") from None
    if not isinstance(obj, dict):
        raise InputError(path, "a JSON object", type(obj).__name__, "Rerun the stage that writes it.")
    return obj


def _read_metrics(path: Path) -> list[dict] | None:
    """PPO rows of a metrics.jsonl sorted by step, one per step (the last logged wins); None if absent."""
    if not path.exists():
        return None
    by_step: dict[int, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(path, "one JSON object per line", f"line {n}: {err}",
                             "A run killed mid-write leaves a truncated last line: delete that line.") from None
        if isinstance(row, dict) and row.get("step") is not None and "env/reward" in row:
            by_step[row["step"]] = row
    return [by_step[k] for k in sorted(by_step)]


def load_run(folder: Path) -> Run | None:
    """Parse a candidate run folder; None when it is not a PPO run (see the module docstring's rule)."""
    metrics = _read_metrics(folder / "metrics.jsonl")
    summary, ev = _read_json(folder / "summary.json"), _read_json(folder / "eval.json")
    if not metrics and summary is None and ev is None:
        return None
    return Run(folder, metrics, summary, ev, _read_json(folder / "audit.json"))


def discover(runs_dir: Path, datasets: list[str] | None) -> dict[tuple[str, str], Run]:
    found = {}
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if datasets is not None and d.name not in datasets:
            continue
        for t in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            run = load_run(t)
            if run is not None:
                found[(d.name, t.name)] = run
    return found


# ---------------------------------------------------------------- rows
def status(run: Run | None) -> str:
    if run is None:
        return "missing"
    absent = [f for f in RUN_FILES if run.source(f) is None]
    return "complete" if not absent else "partial: " + ", ".join(f"no {f}" for f in absent)


def build_row(dataset: str, tag: str, run: Run | None) -> dict[str, Any]:
    """One CSV row; a value that is not there is None (never a default)."""
    row: dict[str, Any] = {"dataset": dataset, "tag": tag, "status": status(run),
                           "mode": run and (_get(run.summary, "mode") or _get(run.eval, "mode"))}
    for col, src, fn in COLUMNS:
        obj = run.source(src) if run is not None else None
        row[col] = fn(obj) if obj is not None else None
    return row


def missing_report(row: dict[str, Any], run: Run | None) -> str | None:
    """One line naming the empty cells of a row, grouped by the file they come from; None if nothing is."""
    if run is None:
        return "no run folder"
    parts = ["mode"] if row["mode"] is None else []
    sources = set(_get(run.eval, "by_source") or {}) if run.eval is not None else set(SOURCES)
    absent = tuple(f"{SYSTEM}/{label}/" for src, label in SOURCES.items() if src not in sources)
    for src in RUN_FILES:
        # a reference source the dataset does not have is not missing (ML-100K has no review references)
        cols = [c for c, s, _ in COLUMNS if s == src and row[c] is None and not (absent and c.startswith(absent))]
        if not cols:
            continue
        if run.source(src) is None:
            parts.append(f"{src} absent ({len(cols)} columns)")
        else:
            parts.append(f"{src}: " + ", ".join(cols))
    return "; ".join(parts) or None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HEADER)
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


# ---------------------------------------------------------------- LaTeX
def _tex_escape(text: str) -> str:
    return re.sub(r"([_&%$#{}])", r"\\\1", str(text))


def _num(v, fmt: str) -> str:
    return MISSING_TEX if v is None else format(v, fmt)


def _pm(diff, se) -> str:
    if diff is None:
        return MISSING_TEX
    return f"${diff:+.4f}$" if se is None else f"${diff:+.4f} \\pm {se:.4f}$"


def _ci(diff, lo, hi) -> str:
    if diff is None:
        return MISSING_TEX
    return f"${diff:+.3f}$" if lo is None or hi is None else f"${diff:+.3f}$ $[{lo:+.3f}, {hi:+.3f}]$"


def tex_columns(sources: list[str]) -> list[tuple[str, Callable[[dict], str]]]:
    """The table's columns; BLEU-4, ROUGE-L and ΔBLEU-4 once per reference source in ``sources``, each
    header naming its source (on template references: template fidelity)."""
    def text_cols(src: str) -> list[tuple[str, Callable[[dict], str]]]:
        label, title = SOURCES[src], SOURCE_TITLE[src]
        ci = f"{SYSTEM}/{label}/bleu4/vs_warm_start"
        return [(f"BLEU-4 ({title})", lambda r: _num(r[f"{SYSTEM}/{label}/bleu4"], ".3f")),
                (f"ROUGE-L ({title})", lambda r: _num(r[f"{SYSTEM}/{label}/rougeL"], ".3f")),
                (f"$\\Delta$BLEU-4 vs WS ({title})", lambda r: _ci(r[f"{ci}/diff"], r[f"{ci}/lo"], r[f"{ci}/hi"]))]

    return [
        ("Run", lambda r: _tex_escape(r["tag"])),
        ("Mode", lambda r: MISSING_TEX if r["mode"] is None else _tex_escape(r["mode"]).replace("\\_", " ")),
        ("Steps", lambda r: _num(r["steps"], "d")),
        ("CTR", lambda r: _num(r[f"{SYSTEM}/ctr"], ".3f")),
        ("Lift (pp)", lambda r: _num(r[f"{SYSTEM}/ctr_lift_pp"], "+.1f")),
        ("$\\Delta$NDCG@10 full", lambda r: _pm(r["full_masked/ndcg@10/diff"], r["full_masked/ndcg@10/diff_se"])),
        ("$\\Delta$NDCG@10 s100", lambda r: _pm(r["sampled100/ndcg@10/diff"], r["sampled100/ndcg@10/diff_se"])),
        ("Top-10 ovl.", lambda r: _num(r["top10_overlap"], ".3f")),
        ("Kendall $\\tau$", lambda r: _num(r["kendall_tau"], ".3f")),
        *[c for src in sources for c in text_cols(src)],
        ("Halluc.", lambda r: _num(r[f"{SYSTEM}/hallucination_rate"], ".3f")),
        ("Tox.", lambda r: _num(r["toxicity_mean"], ".3f")),
        ("Audit", lambda r: MISSING_TEX if r["audit_verdict"] is None else _tex_escape(r["audit_verdict"])),
    ]


def reference_sources(runs: list[Run]) -> list[str]:
    """The reference sources the runs' eval.json report (``by_source``), in :data:`SOURCES` order."""
    found = {s for r in runs if r.eval for s in (r.eval.get("by_source") or {})}
    return [s for s in SOURCES if s in found]


def reference_phrase(runs: list[Run]) -> str:
    """How BLEU/ROUGE references were made, from the reference sources eval.json reports (``by_source``)."""
    sources = reference_sources(runs)
    parts = []
    if "template" in sources:
        parts.append("template references built from item metadata (not human-written text; the warm start "
                     "is trained on the same templates, so these columns measure template fidelity)")
    if "review" in sources:
        parts.append("review references (a sentence of the user's own review)")
    if not parts:
        return "the dataset's reference explanations (no run has been evaluated yet)"
    return " and ".join(parts) + ", each source separately, never pooled"


def latex_table(rows: list[dict[str, Any]], runs: list[Run]) -> str:
    columns = tex_columns(reference_sources(runs))
    caption = (
        "Shielded RecRL runs. Ranking on the test split with the store as deployed after explainer training "
        "against the original ranker: $\\Delta$NDCG@10 full = full ranking over all items with the user's seen "
        "items masked, s100 = the held-out item among 100 sampled unseen negatives; each change $\\pm$ its "
        "paired standard error over users. Top-10 overlap and Kendall $\\tau$ compare each user's top-10 list "
        f"with the original's. BLEU-4 and ROUGE-L against {reference_phrase(runs)}. $\\Delta$BLEU-4 vs WS = "
        "trained explainer $-$ warm start on the same users, with its 95\\% paired bootstrap percentile "
        "interval over users (1000 resamples). Halluc. = share of "
        "explanations naming a catalogue title that is neither the recommended item nor in the user's history. "
        "Simulated CTR = the "
        "user simulator's expected click probability $\\sigma(\\alpha z + \\beta q + \\zeta_u)$; lift in "
        "percentage points over the warm-start explainer. Tox. = mean toxicity probability from the safety "
        f"audit; Audit = its overall verdict. {MISSING_TEX} = not available (see the CSV's status column).")
    n = len(columns)
    lines = ["\\begin{table}[t]", "\\centering", "\\scriptsize", "\\setlength{\\tabcolsep}{3pt}",
             f"\\caption{{{caption}}}", "\\label{tab:recrl-results}",
             "\\begin{tabular}{ll" + "r" * (n - 2) + "}", "\\toprule",
             " & ".join(h for h, _ in columns) + " \\\\", "\\midrule"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for i, d in enumerate(datasets):
        if i:
            lines.append("\\midrule")
        lines.append(f"\\multicolumn{{{n}}}{{l}}{{\\textit{{{_tex_escape(d)}}}}} \\\\")
        lines += [" & ".join(fn(r) for _, fn in columns) + " \\\\" for r in rows if r["dataset"] == d]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures
def _series_se(rows: list[dict], key: str, se_key: str) -> list[tuple[float, float, float | None]]:
    return [(r["step"], r[key], r.get(se_key)) for r in rows if r.get(key) is not None]


def _drift_series(rows: list[dict]) -> list[tuple[float, float, float | None]]:
    """ΔNDCG@10 (run's store − original, the live monitor's validation drift) with its paired SE."""
    return [(r["step"], r["monitor/val_ndcg@10"] - r["monitor/val_ndcg@10_orig"], r.get("monitor/ndcg_diff_se"))
            for r in rows if r.get("monitor/val_ndcg@10") is not None and r.get("monitor/val_ndcg@10_orig") is not None]


def panel_size(dataset: str, tag: str) -> int | None:
    """The run's ``panel_users`` from its latest checkpoint's ``config.json``
    (``checkpoints/recrl/<D>/<tag>/``); None when there is no checkpoint to read it from."""
    try:
        folder = run_folder.latest(dataset, tag)
        config = json.loads((folder / run_folder.CONFIG).read_text()) if folder is not None else {}
    except (OSError, json.JSONDecodeError, InputError):
        return None
    n = config.get("panel_users") if isinstance(config, dict) else None
    return int(n) if n else None


def make_figures(dataset: str, runs: dict[str, Run], rows: list[dict], out_dir: Path) -> tuple[list[Path], list[str]]:
    """All figures of one dataset; returns the files written and a note per figure skipped (no data)."""
    written, skipped = [], []
    curves = {tag: r.metrics for tag, r in runs.items() if r.metrics}
    colors = figures.tag_colors(list(runs))

    def series(fn) -> dict:
        return {tag: s for tag, rows_ in curves.items() if (s := fn(rows_))}

    dq = series(lambda rs: _series_se(rs, "panel/dq", "panel/dq_se"))
    dctr = series(lambda rs: _series_se(rs, "panel/dctr_pp", "panel/dctr_pp_se"))
    kl = series(lambda rs: _series(rs, "objective/kl"))
    drift = series(_drift_series)
    if dq or dctr:
        without = sorted(set(curves) - set(dq) - set(dctr))
        n_panel = {tag: panel_size(dataset, tag) for tag in {*dq, *dctr}}
        written += figures.plot_panel(dataset, dq, dctr, n_panel, colors, out_dir / f"{dataset}_panel", without)
    else:
        skipped.append(f"{dataset}_panel: no panel/* rows in any run's metrics.jsonl (train with --panel_users N; "
                       "the per-step training reward of freshly drawn users is not plotted)")
    if kl:
        written += figures.plot_kl(dataset, kl, colors, out_dir / f"{dataset}_kl")
    else:
        skipped.append(f"{dataset}_kl: no objective/kl rows")
    if drift:
        without_se = sorted(t for t, pts in drift.items() if all(p[2] is None for p in pts))
        written += figures.plot_drift(dataset, drift, colors, out_dir / f"{dataset}_val_ndcg", without_se)
    else:
        skipped.append(f"{dataset}_val_ndcg: no monitor/val_ndcg@10 rows")

    # τ trade-off: test ΔNDCG@10 (eval.json, ± paired SE) when every τ run has it, else the live monitor's
    # validation drift for all of them, so one figure never mixes two protocols; the outcome likewise: the
    # last panel Δq / ΔCTR when every τ run has a panel, else the last step's training reward / CTR.
    tau_rows = [(float(m.group(1)), r) for r in rows if r["dataset"] == dataset and r["status"] != "missing"
                and (m := TAU_TAG.match(r["tag"]))]
    if tau_rows:
        if all(r["full_masked/ndcg@10/diff"] is not None for _, r in tau_rows):
            xkey, sekey = "full_masked/ndcg@10/diff", "full_masked/ndcg@10/diff_se"
            x_label = "ΔNDCG@10, test (full ranking, seen masked; run − original)"
        else:
            xkey, sekey = "val_ndcg_drift", None
            x_label = "ΔNDCG@10, validation monitor (full ranking, seen masked; last − original)"
        if all(r["panel_dq_last"] is not None for _, r in tau_rows):
            proto = figures.panel_protocol({r["tag"]: panel_size(dataset, r["tag"]) for _, r in tau_rows})
            ys = (("panel_dq_last", "panel_dq_se_last", f"Δq at the last panel step\n({proto})"),
                  ("panel_dctr_pp_last", "panel_dctr_pp_se_last", f"ΔCTR (pp) at the last panel step\n({proto})"))
        else:
            ys = (("reward_last", None, "reward at the last PPO step\n(training batch of freshly drawn users)"),
                  ("ctr_last", None, "simulated CTR at the last PPO step\n(training batch of freshly drawn users)"))
        points = [{"tau": tau, "dndcg": r[xkey], "dndcg_se": r[sekey] if sekey else None,
                   **{k: r[k] for k, _, _ in ys}, **{f"{k}_se": r[se] if se else None for k, se, _ in ys}}
                  for tau, r in tau_rows if r[xkey] is not None]
        if points:
            written += figures.plot_tau_tradeoff(dataset, points, x_label, out_dir / f"{dataset}_tau_tradeoff",
                                                 tuple((k, label) for k, _, label in ys))
        else:
            skipped.append(f"{dataset}_tau_tradeoff: no τ run has a ranking change yet")
    return written, skipped


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs_dir", default="logs", help="folder holding <dataset>/<tag>/ run folders")
    p.add_argument("--out_csv", default="experiments/aggregate_results.csv", help="CSV, one row per dataset × tag")
    p.add_argument("--out_dir", default="experiments/figs",
                   help="folder for results_table.tex, the figures (PNG + PDF) and manifest.json")
    p.add_argument("--datasets", nargs="+", default=None, help="only these datasets (default: every one found)")
    p.add_argument("--tags", nargs="+", default=None,
                   help="only these tags, and the runs expected: a listed tag without a folder is a 'missing' row")
    args = p.parse_args(argv)
    started = time.time()
    runs_dir, out_csv, out_dir = (resolve_user_path(x) for x in (args.runs_dir, args.out_csv, args.out_dir))

    if not runs_dir.is_dir():
        raise InputError(runs_dir, "a folder of <dataset>/<tag>/ run folders", "no such folder",
                         "Pass --runs_dir (e.g. logs) after running the trainer.")
    found = discover(runs_dir, args.datasets)
    if args.tags is not None:
        found = {k: v for k, v in found.items() if k[1] in args.tags}
    if not found:
        filters = "".join(f" {flag} {' '.join(v)}" for flag, v in (("--datasets", args.datasets),
                                                                   ("--tags", args.tags)) if v)
        raise InputError(runs_dir, "<dataset>/<tag>/ folders with summary.json, eval.json or a metrics.jsonl "
                         f"of PPO steps{' matching' + filters if filters else ''}", "none",
                         "Run code/trainer/run_recrl_cli.py first, or check --runs_dir/--datasets/--tags.")

    datasets = args.datasets or sorted({d for d, _ in found})
    rows, row_runs = [], []
    for d in datasets:
        tags = args.tags or sorted(t for dd, t in found if dd == d)
        if not tags:
            print(f"note: no runs for dataset {d} under {runs_dir}")
        for tag in tags:
            run = found.get((d, tag))
            rows.append(build_row(d, tag, run))
            row_runs.append(run)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_csv, rows)
    tex = out_dir / "results_table.tex"
    present = [r for r in row_runs if r is not None]
    write_text(tex, latex_table(rows, present))
    fig_paths, skipped = [], []
    for d in datasets:
        w, s = make_figures(d, {t: r for (dd, t), r in found.items() if dd == d}, rows, out_dir)
        fig_paths += w
        skipped += s

    inputs = {f"{r.folder.parent.name}/{r.folder.name}/{f}": r.folder / f
              for r in present for f in RUN_FILES if (r.folder / f).exists()}
    outputs = {"csv": out_csv, "table": tex, **{p.name: p for p in fig_paths}}
    mpath = manifest.write(out_dir, manifest.build(
        "aggregate", config=vars(args) | {"runs_dir": str(runs_dir)}, inputs=inputs, outputs=outputs,
        started=started, metrics={"rows": len(rows), "runs": len(present)}))

    print(f"aggregated {len(present)} run(s) into {len(rows)} row(s) from {runs_dir}")
    for row, run in zip(rows, row_runs):
        report = missing_report(row, run)
        print(f"  {row['dataset']}/{row['tag']}: {row['status']}" + (f"; missing: {report}" if report else ""))
    for note in skipped:
        print(f"  figure skipped: {note}")
    print(f"wrote {out_csv}\nwrote {tex}")
    for path in fig_paths:
        print(f"wrote {path}")
    print(f"wrote {mpath}")
    return rows


if __name__ == "__main__":
    run_cli(main)
