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


def _metrics_rows(n_steps: int, ndcg: list[float], panel_every: int = 0) -> list[dict]:
    rows = []
    for step in range(1, n_steps + 1):
        r = {"time": 0.0, "step": step, "env/reward": 0.5 + 0.1 * step, "env/ctr": 0.4 + 0.1 * step,
             "objective/kl": 0.2 * step, "losses/approx_kl": 0.01}
        if ndcg[step - 1] is not None:
            r.update({"monitor/val_ndcg@10": ndcg[step - 1], "monitor/val_ndcg@10_orig": 0.12,
                      "monitor/top10_overlap": 0.9, "monitor/ndcg_diff_se": 0.001})
        if panel_every and step % panel_every == 0:  # the trainer's panel_metrics keys
            r.update({"panel/q": 0.8, "panel/dq": 0.01 * step, "panel/dq_se": 0.005, "panel/ctr_pp": 93.0,
                      "panel/dctr_pp": 0.1 * step, "panel/dctr_pp_se": 0.05})
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
    # evaluate_run's layout: reference-free metrics per system; reference-based ones only per source
    free = {"usr": 0.7, "distinct1": 0.2, "distinct2": 0.5, "genre_mention": 0.4, "genre_named_rate": 0.5,
            "genre_precision": 0.8, "genre_recall": 0.3, "hallucination_rate": 0.03, "prompt_copy_rate": 0.0,
            "self_reference_rate": 0.0, "unfinished_rate": 0.1, "mean_len": 21.5, "n": 943}
    system = {**free, "ctr": 0.62, "q": 0.35, "toxicity_mean": 0.01}
    ref = {"bleu1": 0.31, "bleu4": 0.052, "rouge1": 0.33, "rouge2": 0.11, "rougeL": 0.29, "embed_sim": 0.61}
    ci = {m: {"diff": 0.01, "lo": -0.002, "hi": 0.02, "n": 943, "n_boot": 1000}
          for m in (*ref, "distinct1", "distinct2", "genre_mention", "genre_named_rate", "genre_precision",
                    "genre_recall")}
    return {"dataset": "ml100k", "tag": "shielded", "mode": "shielded", "step": 3, "n_users": 943,
            "protocol": {"full_masked": "full ranking, seen masked"},
            "ranking": {"orig": orig, "run": run, "diff": {k: run[k] - orig[k] for k in orig},
                        "diff_se": {k: 0.002 for k in orig}, "top10_overlap": 0.93, "kendall_tau": 0.88,
                        "max_score_change": 0.05},
            "systems": {"recrl": system, "warm_start": dict(system, ctr=0.6)},
            "by_source": {"template": {"recrl": {**ref, **free}},
                          "review": {"recrl": {**ref, "bleu4": 0.011, "rougeL": 0.12, **free}}},
            "text_vs_warm_start": {"template": {"recrl": ci},
                                   "review": {"recrl": dict(ci, bleu4=dict(ci["bleu4"], diff=0.03))}},
            "text_vs_warm_start_all": {"recrl": {k: v for k, v in ci.items() if k not in ref}},
            "ctr_lift_pp": {"recrl": 2.0, "warm_start": 0.0}}


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    _write_run(logs / "ml100k" / "shielded", "shielded", _metrics_rows(3, [None, 0.121, 0.119], panel_every=1),
               _eval_json(),
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
    # BLEU/ROUGE only per reference source, labelled template fidelity on template references
    assert "recrl/bleu4" not in header and "recrl/feature_match" not in header
    assert float(shielded["recrl/template_fidelity/bleu4"]) == pytest.approx(0.052)
    assert float(shielded["recrl/review/bleu4"]) == pytest.approx(0.011)
    assert float(shielded["recrl/genre_precision"]) == pytest.approx(0.8)
    assert float(shielded["recrl/review/bleu4/vs_warm_start/diff"]) == pytest.approx(0.03)
    assert float(shielded["recrl/template_fidelity/bleu4/vs_warm_start/lo"]) == pytest.approx(-0.002)
    assert float(shielded["recrl/genre_recall/vs_warm_start/hi"]) == pytest.approx(0.02)
    assert float(shielded["panel_dq_last"]) == pytest.approx(0.03) and shielded["panel_step_last"] == "3"
    assert float(shielded["recrl/ctr_lift_pp"]) == pytest.approx(2.0)
    assert float(shielded["toxicity_p95"]) == pytest.approx(0.02) and shielded["audit_verdict"] == "pass"
    assert float(shielded["gender_gap"]) == pytest.approx(0.03) and float(shielded["privacy_leak_rate"]) == 0.0
    assert all(shielded[c] != "" for c in HEADER)

    assert noproj["status"] == "partial: no eval.json, no audit.json" and noproj["mode"] == "no_projection"
    assert float(noproj["val_ndcg_drift"]) == pytest.approx(0.08 - 0.12)
    eval_cols = [f"{k}/{p}" for k in RANK for p in ("orig", "run", "diff", "diff_se")] + \
        ["top10_overlap", "kendall_tau", "recrl/template_fidelity/bleu4", "recrl/ctr", "toxicity_mean", "audit_verdict"]
    assert all(noproj[c] == "" for c in eval_cols)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "ml100k/no_projection: partial" in x)
    # trained without a validation panel: its panel columns are empty, and said so
    assert "partial: no eval.json, no audit.json; missing: metrics.jsonl: panel_step_last" in line
    assert "eval.json absent" in line and "review" not in line

    tex = (tmp_path / "out" / "figs" / "results_table.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in tex
    assert "seen items masked" in tex and "100 sampled unseen negatives" in tex
    assert "template references" in tex and "expected click probability" in tex and "bootstrap" in tex
    header_line = next(line for line in tex.splitlines() if line.startswith("Run &"))
    assert "BLEU-4 (template fidelity)" in header_line and "BLEU-4 (review refs)" in header_line
    shielded_line = next(line for line in tex.splitlines() if line.startswith("shielded &"))
    assert "$-0.0010 \\pm 0.0020$" in shielded_line and "pass" in shielded_line and "—" not in shielded_line
    assert "$+0.010$ $[-0.002, +0.020]$" in shielded_line and "$+0.030$ $[-0.002, +0.020]$" in shielded_line
    noproj_line = next(line for line in tex.splitlines() if line.startswith("no\\_projection &"))
    assert noproj_line.count("—") == 15  # CTR … Audit (3 text columns per source); run, mode, steps are known

    figs = tmp_path / "out" / "figs"
    for stem in ("ml100k_panel", "ml100k_kl", "ml100k_val_ndcg"):
        png = figs / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert mpimg.imread(png).shape[0] > 100
        assert (figs / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    assert not (figs / "ml100k_tau_tradeoff.png").exists()  # no tau<value> runs
    assert not (figs / "ml100k_reward_ctr.png").exists()  # per-step training reward: not a learning curve
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
    assert next(line for line in tex.splitlines() if line.startswith("frozen &")).count("—") == 17


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


def test_panel_figure_skips_runs_without_panel_rows(tmp_path, runs_dir, capsys):
    """Without panel/* rows in any run there is no panel figure, and a line says why."""
    for tag in ("shielded", "no_projection"):
        path = runs_dir / "ml100k" / tag / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("panel/")}) + "\n"
                                for r in rows))
    main(_args(tmp_path, runs_dir))
    assert not (tmp_path / "out" / "figs" / "ml100k_panel.png").exists()
    assert "figure skipped: ml100k_panel: no panel/* rows" in capsys.readouterr().out


def test_panel_size_comes_from_the_runs_checkpoint_config(tmp_path, monkeypatch):
    from shielded_recrl.eval import figures
    from shielded_recrl.eval.aggregate_main import panel_size

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    assert panel_size("ml100k", "learn") is None  # no checkpoint: not recorded
    run = tmp_path / "checkpoints" / "recrl" / "ml100k" / "learn"
    (run / "step-000016").mkdir(parents=True)
    (run / "latest").write_text(json.dumps({"step": 16, "folder": "step-000016"}))
    (run / "step-000016" / "config.json").write_text(json.dumps({"panel_users": 32, "dataset": "ml100k"}))
    assert panel_size("ml100k", "learn") == 32
    assert figures.panel_protocol({"learn": 32}) == "fixed panel of 32 validation users, greedy, paired vs warm start"
    assert figures.panel_protocol({"a": 32, "b": None}).startswith("fixed panel of N ")


def test_tau_tradeoff_uses_the_panel_when_every_tau_run_has_one(tmp_path, runs_dir, monkeypatch):
    from shielded_recrl.eval import figures

    seen = {}
    real = figures.plot_tau_tradeoff

    def spy(dataset, points, x_label, stem, y):
        seen.update(points=points, y=y)
        return real(dataset, points, x_label, stem, y)

    monkeypatch.setattr(figures, "plot_tau_tradeoff", spy)
    for tau, end in (("0.9", 0.10), ("0.99", 0.118)):
        _write_run(runs_dir / "ml100k" / f"tau{tau}", "shielded", _metrics_rows(4, [0.12] * 3 + [end], panel_every=2))
    main(_args(tmp_path, runs_dir))
    assert [k for k, _ in seen["y"]] == ["panel_dq_last", "panel_dctr_pp_last"]
    assert "fixed panel of N validation users" in seen["y"][0][1]
    assert seen["points"][0]["panel_dq_last"] == pytest.approx(0.04)
    assert seen["points"][0]["panel_dq_last_se"] == pytest.approx(0.005)


def test_smoke_table_labels_template_overlap_as_fidelity(tmp_path, monkeypatch, capsys):
    """The smoke table reads BLEU/ROUGE per reference source (eval.json by_source), never from "systems",
    labels them by source, and shows ΔBLEU-4 with its paired bootstrap interval."""
    from shielded_recrl.eval import smoke_table

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    ev = _eval_json()
    del ev["by_source"]["review"], ev["text_vs_warm_start"]["review"]
    ev["by_source"]["template"]["warm_start"] = dict(ev["by_source"]["template"]["recrl"], bleu4=0.04)
    ev["vs_warm_start"] = {"recrl": {"ctr": {"diff": 0.02, "se": 0.01, "p": 0.04},
                                     "q": {"diff": 0.1, "se": 0.03, "p": 0.01}}}
    (tmp_path / "logs" / "ml100k" / "shielded").mkdir(parents=True)
    (tmp_path / "logs" / "ml100k" / "shielded" / "eval.json").write_text(json.dumps(ev))
    smoke_table.main(["--dataset", "ml100k"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| system |"))
    assert "BLEU-4 (template fidelity)" in header and "ΔBLEU-4 (template fidelity)" in header
    assert "review" not in header
    row = next(line for line in out.splitlines() if line.startswith("| shielded |"))
    assert "| 0.052 | 0.290 | +0.010 [-0.002, +0.020] |" in row and "+2.00 ± 1.00 (0.04)" in row
    warm = next(line for line in out.splitlines() if line.startswith("| warm_start |"))
    assert "| 0.040 | 0.290 | 0 |" in warm


@pytest.mark.parametrize("jobs", [1, 2])
def test_smoke_table_prints_the_wall_time_in_all_next_to_the_per_stage_sum(tmp_path, monkeypatch, capsys, jobs):
    """Stages that ran in two lanes overlap: the table states the wall time in all, and that the per-stage sum
    exceeds it, rather than passing the sum off as the run's time."""
    from shielded_recrl.eval import smoke_table

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    times = tmp_path / "stage_times.tsv"
    times.write_text("ranker\t10.0\nppo_shielded\t30.0\nppo_frozen\t29.5\n")
    smoke_table.main(["--dataset", "ml100k", "--times", str(times), "--wall_s", "41.2", "--jobs", str(jobs)])
    out = capsys.readouterr().out
    assert "ranker 10.0, ppo_shielded 30.0, ppo_frozen 29.5; sum 69.5" in out
    assert f"wall time of the stages in all: 41.2 s ({jobs} stage(s) at a time" in out
    assert ("their sum exceeds it" in out) == (jobs > 1)
