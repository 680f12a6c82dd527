"""Print the smoke pipeline's results table from the stages' manifests (no recomputation).

    python -m shielded_recrl.eval.smoke_table --dataset ml100k [--times logs/smoke/stage_times.tsv]

Every number is read from a manifest that a stage wrote in this checkout; a stage that has not run
shows as missing rather than as a number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shielded_recrl.common.paths import checkpoints_dir, logs_dir, proc_dir, repo_root

TAGS = ("shielded", "no_projection", "frozen")  # the smoke run's PPO runs
PROTOCOLS = {
    "full_masked": "full ranking, seen items masked (primary)",
    "full_unmasked": "full ranking, nothing masked (RecBole's protocol)",
    "sampled100": "true item among 100 sampled unseen negatives (paper's protocol)",
}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def ranker_rows(metrics: dict, split: str = "test") -> list[str]:
    lines = ["| model | protocol | NDCG@10 | HR@10 | NDCG@20 | HR@20 |", "|---|---|---|---|---|---|"]
    for model in ("sasrec", "most_popular", "random"):
        for proto in PROTOCOLS:
            key = f"{split}/{model}/{proto}"
            if f"{key}/ndcg@10" not in metrics:
                continue
            vals = [metrics[f"{key}/{m}"] for m in ("ndcg@10", "hr@10", "ndcg@20", "hr@20")]
            lines.append(f"| {model} | {proto} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return lines


# reference source → how its BLEU/ROUGE are labelled: against template references (built from metadata, the
# templates the warm start is trained on) overlap measures template fidelity, not agreement with human text
SOURCE_LABEL = {"template": "template fidelity", "review": "review refs"}


def _ci(c: dict | None) -> str:
    if not c or c.get("diff") is None:
        return "–"
    return f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def eval_lines(d: str, evals: list[tuple[str, dict]]) -> list[str]:
    """The evaluation table of the smoke runs' eval.json (``[(tag, eval.json), ...]``)."""
    sources = [s for s in SOURCE_LABEL if s in evals[0][1].get("by_source", {})]
    n = evals[0][1]["n_users"]
    lines = ["\nevaluation (test split): ranking of all users with the run's store vs the original, NDCG@10 full "
             "ranking seen masked, Δ ± paired SE;\n"
             f"explanations of {n} seeded test users: BLEU-4 / ROUGE-L (0–1) per reference source, never pooled "
             "(template fidelity = against template references built from metadata, on which the warm start is "
             "trained); ΔBLEU-4 = system − warm start on the same users [95% paired bootstrap interval over "
             "users]; CTR = simulated click probability on a slate item; vs the warm start on the same users: "
             "CTR lift in points and Δq, each ± paired SE (paired t-test p)"]
    text_head = "".join(f" BLEU-4 ({SOURCE_LABEL[s]}) | ROUGE-L ({SOURCE_LABEL[s]}) | ΔBLEU-4 ({SOURCE_LABEL[s]}) |"
                        for s in sources)
    lines.append(f"| system | NDCG@10 orig → run (Δ ± SE) | top-10 overlap |{text_head} halluc. | CTR | "
                 "lift (pp) ± SE (p) | Δq ± SE (p) | audit |")
    lines.append("|---|---|---|" + "---|" * (3 * len(sources)) + "---|---|---|---|---|")

    def vs(e, system, field, scale=1.0):
        c = e.get("vs_warm_start", {}).get(system, {}).get(field)
        if c is None:
            return "–"
        return f"{scale * c['diff']:+.2f} ± {scale * c['se']:.2f} ({c['p']:.2f})" if scale != 1.0 else \
            f"{c['diff']:+.3f} ± {c['se']:.3f} ({c['p']:.2f})"

    def text_cells(e, system):
        cells = []
        for s in sources:
            m = e.get("by_source", {}).get(s, {}).get(system, {})
            ci = "0" if system == "warm_start" else _ci(e.get("text_vs_warm_start", {}).get(s, {}).get(system, {})
                                                            .get("bleu4"))
            cells += [_f(m.get("bleu4"), ".3f"), _f(m.get("rougeL"), ".3f"), ci]
        return "".join(f" {c} |" for c in cells)

    for tag, e in evals:
        r = e["ranking"]
        k = "full_masked/ndcg@10"
        m = e["systems"]["recrl"]
        audit = _load(logs_dir() / d / tag / "audit.json")
        verdict = audit["verdict"] if audit else "not audited"
        lines.append(f"| {tag} | {r['orig'][k]:.4f} → {r['run'][k]:.4f} ({r['diff'][k]:+.4f} ± {r['diff_se'][k]:.4f}) | "
                     f"{r['top10_overlap']:.3f} |{text_cells(e, 'recrl')} {m['hallucination_rate']:.2f} | "
                     f"{m['ctr']:.4f} | {vs(e, 'recrl', 'ctr', 100.0)} | {vs(e, 'recrl', 'q')} | {verdict} |")
    first = evals[0][1]
    for system, m in first["systems"].items():
        if system != "recrl":
            base = system == "warm_start"
            lines.append(f"| {system} | – | – |{text_cells(first, system)} {m['hallucination_rate']:.2f} | "
                         f"{m['ctr']:.4f} | {'0' if base else vs(first, system, 'ctr', 100.0)} | "
                         f"{'0' if base else vs(first, system, 'q')} | – |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--times", default=None, help="stage_times.tsv written by run_local_smoke.sh")
    p.add_argument("--wall_s", type=float, default=None,
                   help="the stages' wall time in all, from the first stage's start to the last one's end")
    p.add_argument("--jobs", type=int, default=1, help="stages the driver ran at once (run_local_smoke.sh --jobs)")
    args = p.parse_args(argv)
    d = args.dataset

    print(f"\n=== Shielded RecRL smoke results: {d} ===")
    stats = _load(proc_dir(d) / "stats.json")
    if stats:
        print(f"data: {stats['users']} users, {stats['items']} items, {stats['interactions']} interactions "
              f"({stats['k_core']}-core, {stats['split']})")
    else:
        print("data: missing (preprocessing has not run)")

    ranker = _load(checkpoints_dir() / f"sasrec_{d}.manifest.json")
    if ranker:
        m = ranker["metrics"]
        print(f"\nranker (SASRec), test split, selected on validation NDCG@10 (full, masked); "
              f"best epoch {m.get('best_epoch')}, training {m.get('train_wall_s')} s")
        print("\n".join(ranker_rows(m)))
        print("protocols: " + "; ".join(f"{k} = {v}" for k, v in PROTOCOLS.items()))
    else:
        print("\nranker: missing")

    basis = _load(checkpoints_dir() / f"basis_{d}.manifest.json")
    if basis:
        m = basis["metrics"]
        spectrum = ", ".join(f"τ={t}: {m[f'rank@{t}']}" for t in ("0.9", "0.95", "0.99", "0.999") if f"rank@{t}" in m)
        print(f"\nprojection basis: protected rank {m['rank']} of d={m['d']} at τ={basis['config']['energy']} "
              f"(rank reached at {spectrum})")
    else:
        print("\nprojection basis: missing")

    runs = [(tag, _load(logs_dir() / d / tag / "summary.json")) for tag in TAGS]
    runs = [(tag, r) for tag, r in runs if r]
    if runs:
        kind = runs[0][1].get("reward", "click")
        what = "explanation quality q" if kind == "q" else "simulated click σ(αz + βq + ζ_u)"
        print(f"\nShielded PPO (smoke config): trained reward = {what}, mean over the step's rollouts (new users "
              "each step: not a learning curve);\nranker drift = validation NDCG@10 (full ranking, seen masked) with "
              "the run's store, top-10 overlap vs the original store")
        print("| run | steps | reward first → last | KL last | val NDCG@10 orig → last | top-10 overlap |")
        print("|---|---|---|---|---|---|")
        for tag, r in runs:
            ndcg = (f"{r['val_ndcg_orig']:.4f} → {r['val_ndcg_last']:.4f}"
                    if r.get("val_ndcg_last") is not None else "not monitored")
            overlap = f"{r['top10_overlap_last']:.3f}" if r.get("top10_overlap_last") is not None else "-"
            print(f"| {tag} | {r['steps']} | {r['reward_first']:.3f} → {r['reward_last']:.3f} | "
                  f"{r['kl_last']:.2f} | {ndcg} | {overlap} |")
        print("(a 2-step smoke run measures plumbing, not learning: the reward change is within noise)")

    evals = [(tag, _load(logs_dir() / d / tag / "eval.json")) for tag in TAGS]
    evals = [(tag, e) for tag, e in evals if e]
    if evals:
        print("\n".join(eval_lines(d, evals)))
        report = _load(repo_root() / "docs" / f"safety_report_{d}.json")
        if report:
            failed = [c for c, v in report.get("checks", {}).items() if v.get("status") == "fail"]
            print(f"safety audit ({report.get('run', {}).get('tag', '?')}): {report['verdict']}"
                  + (f" — failed: {', '.join(failed)}" if failed else "") + f" (docs/safety_report_{d}.md)")

    if args.times and Path(args.times).exists():
        rows = [line.split("\t") for line in Path(args.times).read_text().splitlines() if line.strip()]
        total = sum(float(t) for _, t in rows)
        print("\nwall time per stage (s): " + ", ".join(f"{n} {float(t):.1f}" for n, t in rows)
              + f"; sum {total:.1f}")
        if args.wall_s is not None:
            print(f"wall time of the stages in all: {args.wall_s:.1f} s ({args.jobs} stage(s) at a time"
                  + (", so the per-stage times overlap and their sum exceeds it)" if args.jobs > 1 else ")"))


if __name__ == "__main__":
    main()
