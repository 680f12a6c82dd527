"""Aggregation stage: run discovery, CSV rows (complete / partial / missing), LaTeX table, figures, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from shielded_recrl.common.errors import InputError
from shielded_recrl.eval.aggregate_main import HEADER, main

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RANK = ("full_masked/ndcg@10", "full_masked/hr@10", "sampled100/ndcg@10")


def _metrics_rows(n_steps: int, ndcg: list[float]) -> list[dict]:
    rows = []
    for step in range(1, n_steps + 1):
        r = {"time": 0.0, "step": step, "env/reward": 0.5 + 0.1 * step, "env/ctr": 0.4 + 0.1 * step,
             "objective/kl": 0.2 * step, "losses/approx_kl": 0.01}
        if ndcg[step - 1] is not None:
            r.update({"monitor/val_ndcg@10": ndcg[step - 1], "monitor/val_ndcg@10_orig": 0.12,
                      "monitor/top10_overlap": 0.9})
        rows.append(r)
    return rows


def _write_run(folder: Path, mode: str, rows: list[dict], eval_json: dict | None = None,
               audit: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monitored = [r for r in rows if "monitor/val_ndcg@10" in r]
    summary = {"steps": rows[-1]["step"], "stop_reason": "max_steps", "mode": mode,
               "reward_first": rows[0]["env/reward"], "reward_last": rows[-1]["env/reward"],
               "kl_last": rows[-1]["objective/kl"], "val_ndcg_last": monitored[-1]["monitor/val_ndcg@10"],
               "val_ndcg_orig": 0.12, "top10_overlap_last": 0.9, "wall_s": 1.0}
    (folder / "summary.json").write_text(json.dumps(summary))
    if eval_json is not None:
        (folder / "eval.json").write_text(json.dumps(eval_json))
    if audit is not None:
        (folder / "audit.json").write_text(json.dumps(audit))


def _eval_json() -> dict:
    orig = {"full_masked/ndcg@10": 0.11, "full_masked/hr@10": 0.20, "sampled100/ndcg@10": 0.40}
    run = {"full_masked/ndcg@10": 0.109, "full_masked/hr@10": 0.201, "sampled100/ndcg@10": 0.398}
    system = {"bleu1": 0.31, "bleu4": 0.052, "rouge1": 0.33, "rouge2": 0.11, "rougeL": 0.29, "embed_sim": 0.61,
              "usr": 0.7, "distinct1": 0.2, "distinct2": 0.5, "feature_match": 0.4, "hallucination_rate": 0.03,
              "mean_len": 21.5, "ctr": 0.62, "q": 0.35, "toxicity_mean": 0.01}
    return {"dataset": "ml100k", "tag": "shielded", "mode": "shielded", "step": 3, "n_users": 943,
            "protocol": {"full_masked": "full ranking, seen masked"},
            "ranking": {"orig": orig, "run": run, "diff": {k: run[k] - orig[k] for k in orig},
                        "diff_se": {k: 0.002 for k in orig}, "top10_overlap": 0.93, "kendall_tau": 0.88,
                        "max_score_change": 0.05},
            "systems": {"recrl": system, "warm_start": dict(system, ctr=0.6)},
            "by_source": {"template": {"recrl": system}},
            "ctr_lift_pp": {"recrl": 2.0, "warm_start": 0.0}}


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    _write_run(logs / "ml100k" / "shielded", "shielded", _metrics_rows(3, [None, 0.121, 0.119]), _eval_json(),
               {"verdict": "pass", "toxicity": {"mean": 0.004, "p95": 0.02}, "bias": {"gender_gap": 0.03},
                "popularity": {"gini_delta": -0.01}, "privacy": {"leak_rate": 0.0}})
    _write_run(logs / "ml100k" / "no_projection", "no_projection", _metrics_rows(3, [0.115, 0.10, 0.08]))
    # Other stages' log folders next to the runs are not runs.
    (logs / "ml100k" / "ranker").mkdir()
    (logs / "ml100k" / "ranker" / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 7.0}) + "\n")
    (logs / "smoke").mkdir()
    (logs / "smoke" / "stage_times.tsv").write_text("ranker\t10\n")
    return logs


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _args(tmp_path: Path, runs_dir: Path, *extra: str) -> list[str]:
    return ["--runs_dir", str(runs_dir), "--out_csv", str(tmp_path / "out" / "agg.csv"),
            "--out_dir", str(tmp_path / "out" / "figs"), *extra]


def test_rows_table_and_figures(tmp_path, runs_dir, capsys):
    main(_args(tmp_path, runs_dir))
    header, rows = _read_csv(tmp_path / "out" / "agg.csv")
    assert header == HEADER
    assert [(r["dataset"], r["tag"]) for r in rows] == [("ml100k", "no_projection"), ("ml100k", "shielded")]
    noproj, shielded = rows

    assert shielded["status"] == "complete" and shielded["mode"] == "shielded"
    assert shielded["steps"] == "3" and shielded["stop_reason"] == "max_steps"
    assert float(shielded["reward_first"]) == pytest.approx(0.6)
    assert float(shielded["reward_last"]) == pytest.approx(0.8)
    assert float(shielded["ctr_first"]) == pytest.approx(0.5) and float(shielded["ctr_last"]) == pytest.approx(0.7)
    assert float(shielded["kl_last"]) == pytest.approx(0.6)
    assert float(shielded["val_ndcg_drift"]) == pytest.approx(0.119 - 0.12)
    assert float(shielded["full_masked/ndcg@10/diff"]) == pytest.approx(-0.001)
    assert float(shielded["sampled100/ndcg@10/diff_se"]) == pytest.approx(0.002)
    assert float(shielded["kendall_tau"]) == pytest.approx(0.88)
    assert float(shielded["recrl/bleu4"]) == pytest.approx(0.052)
    assert float(shielded["recrl/ctr_lift_pp"]) == pytest.approx(2.0)
    assert float(shielded["toxicity_p95"]) == pytest.approx(0.02) and shielded["audit_verdict"] == "pass"
    assert float(shielded["gender_gap"]) == pytest.approx(0.03) and float(shielded["privacy_leak_rate"]) == 0.0
    assert all(shielded[c] != "" for c in HEADER)

    assert noproj["status"] == "partial: no eval.json, no audit.json" and noproj["mode"] == "no_projection"
    assert float(noproj["val_ndcg_drift"]) == pytest.approx(0.08 - 0.12)
    eval_cols = [f"{k}/{p}" for k in RANK for p in ("orig", "run", "diff", "diff_se")] + \
        ["top10_overlap", "kendall_tau", "recrl/bleu4", "recrl/ctr", "toxicity_mean", "audit_verdict"]
    assert all(noproj[c] == "" for c in eval_cols)
    out = capsys.readouterr().out
    assert "ml100k/no_projection: partial: no eval.json, no audit.json; missing: eval.json absent" in out

    tex = (tmp_path / "out" / "figs" / "results_table.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in tex
    assert "seen items masked" in tex and "100 sampled unseen negatives" in tex
    assert "template references" in tex and "expected click probability" in tex
    shielded_line = next(line for line in tex.splitlines() if line.startswith("shielded &"))
    assert "$-0.0010 \\pm 0.0020$" in shielded_line and "pass" in shielded_line and "—" not in shielded_line
    noproj_line = next(line for line in tex.splitlines() if line.startswith("no\\_projection &"))
    assert noproj_line.count("—") == 11  # CTR … Audit; run, mode and steps are known

    figs = tmp_path / "out" / "figs"
    for stem in ("ml100k_reward_ctr", "ml100k_kl", "ml100k_val_ndcg"):
        png = figs / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert mpimg.imread(png).shape[0] > 100
        assert (figs / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    assert not (figs / "ml100k_tau_tradeoff.png").exists()  # no tau<value> runs
    assert json.loads((figs / "manifest.json").read_text())["metrics"] == {"rows": 2, "runs": 2}


def test_expected_tags_add_missing_rows(tmp_path, runs_dir, capsys):
    rows = main(_args(tmp_path, runs_dir, "--tags", "shielded", "no_projection", "frozen"))
    assert [(r["tag"], r["status"]) for r in rows] == [
        ("shielded", "complete"), ("no_projection", "partial: no eval.json, no audit.json"), ("frozen", "missing")]
    _, csv_rows = _read_csv(tmp_path / "out" / "agg.csv")
    frozen = csv_rows[2]
    assert frozen["status"] == "missing"
    assert all(frozen[c] == "" for c in HEADER if c not in ("dataset", "tag", "status"))
    assert "ml100k/frozen: missing; missing: no run folder" in capsys.readouterr().out
    tex = (tmp_path / "out" / "figs" / "results_table.tex").read_text()
    assert next(line for line in tex.splitlines() if line.startswith("frozen &")).count("—") == 13


def test_tau_tradeoff_figure(tmp_path, runs_dir):
    for tau, end in (("0.9", 0.10), ("0.99", 0.118)):
        _write_run(runs_dir / "ml100k" / f"tau{tau}", "shielded", _metrics_rows(2, [0.12, end]))
    main(_args(tmp_path, runs_dir))
    stem = tmp_path / "out" / "figs" / "ml100k_tau_tradeoff"
    assert stem.with_suffix(".png").read_bytes()[:8] == PNG_SIGNATURE
    assert stem.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


def test_filters_and_errors(tmp_path, runs_dir):
    rows = main(_args(tmp_path, runs_dir, "--tags", "shielded"))
    assert [r["tag"] for r in rows] == ["shielded"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="none"):
        main(_args(tmp_path, tmp_path / "empty"))
    with pytest.raises(InputError, match="no such folder"):
        main(_args(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(InputError, match="none"):
        main(_args(tmp_path, runs_dir, "--datasets", "steam"))
    bad = runs_dir / "ml100k" / "shielded" / "metrics.jsonl"
    bad.write_text(bad.read_text() + '{"step": 4, "env/rew')
    with pytest.raises(InputError, match="truncated"):
        main(_args(tmp_path, runs_dir))


def test_script_from_code_eval_with_relative_paths(tmp_path, runs_dir):
    """The seed's invocation: ``cd code/eval && python aggregate_main.py --runs_dir ../../logs …``."""
    cwd = tmp_path / "code" / "eval"
    cwd.mkdir(parents=True)
    res = subprocess.run([sys.executable, str(REPO / "code" / "eval" / "aggregate_main.py"),
                          "--runs_dir", "../../logs", "--out_csv", "../../experiments/aggregate_results.csv",
                          "--out_dir", "../../experiments/figs"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "experiments" / "aggregate_results.csv").exists()
    assert f"wrote {tmp_path / 'experiments' / 'figs' / 'results_table.tex'}" in res.stdout
    empty = tmp_path / "empty_logs"
    empty.mkdir()
    res = subprocess.run([sys.executable, str(REPO / "code" / "eval" / "aggregate_main.py"), "--runs_dir", str(empty),
                          "--out_csv", str(tmp_path / "x.csv"), "--out_dir", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "error:" in res.stderr and not (tmp_path / "x.csv").exists()
