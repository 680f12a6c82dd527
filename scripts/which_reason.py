"""Does an explainer name the ranker's reason where it is not the latest item? (a diagnostic)

    python scripts/which_reason.py --dataset ml100k --runs learn_r204 learn_r204_s1 learn_r204_s2

faithfulness@1 (``docs/faithfulness.md``) can rise by naming the most recent shown item, the ranker's top
contributor in about half the pairs, without reading the ranker at all. For each evaluated run
(``logs/<D>/<run>/explanations.jsonl``, slate set, the set faithfulness@1 is reported on) this finds every pair's
top contributor among the items its prompt showed (leave-one-out on the ranker checkpoint's original store, as
the evaluation does) and splits the pairs by where it stands: the latest shown item, an older shown item, or
none (no shown item's deletion lowers the score). In each group it prints each system's faithfulness@1 and
system − warm start ± paired SE over users (paired t-test p). A ranker-blind explainer that always names the
latest item scores 1 on the first group and 0 on the second; the second group is where naming the ranker's
reason cannot come from position. The groups are fixed by the ranker before any text is read (the same pairs
for every system of a run), so the split is a stratification, not a selection on the outcome. ``--user_offset K``
reads the runs' evaluations on the confirmation users (``evaluate_run.py --user_offset K``). Writes nothing.
"""

from __future__ import annotations

import argparse

import numpy as np

from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.paths import checkpoints_dir, eval_dir
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.eval.compare import compare_systems
from shielded_recrl.eval.compare_runs import load_run
from shielded_recrl.eval.faithfulness import top_contributor
from shielded_recrl.ranker.attribution import shown_attribution
from shielded_recrl.ranker.checkpoint import load_ranker

GROUPS = ("latest", "older", "none")


def reason_groups(records: list[dict], ranker) -> dict[int, str]:
    """user id → where the top contributor of that user's slate pair stands (one of :data:`GROUPS`)."""
    slate = {int(r["user_id"]): r for r in records if r["set"] == "slate"}
    users = sorted(slate)
    rows = [slate[u] for u in users]
    attr = shown_attribution(ranker, [np.asarray(r["history"], np.int64) for r in rows],
                             [int(r["item_id"]) for r in rows], [r["shown"] for r in rows])
    tops = top_contributor(attr.items, attr.contributions).tolist()
    out = {}
    for u, r, top in zip(users, rows, tops):
        out[u] = "none" if top == 0 else ("latest" if r["shown"] and int(top) == int(r["shown"][-1]) else "older")
    return out


def split(records: list[dict], groups: dict[int, str], baseline: str = "warm_start") -> dict:
    """``{group: {"n": pairs, "level": {system: faith@1}, "vs": {system: Comparison dict}}}``."""
    out = {}
    for g in GROUPS:
        part = [r for r in records if r["set"] == "slate" and groups.get(int(r["user_id"])) == g]
        level = {}
        for r in part:
            level.setdefault(r["system"], []).append(float(r["faith1"]))
        vs = compare_systems(part, baseline, {"faith1": "slate"}) if part else {}
        out[g] = {"n": len({int(r["user_id"]) for r in part}),
                  "level": {s: float(np.mean(v)) for s, v in level.items()},
                  "vs": {s: c["faith1"] for s, c in vs.items() if "faith1" in c}}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--runs", nargs="+", required=True, help="evaluated run tags")
    p.add_argument("--ranker_ckpt", default="", help="default checkpoints/sasrec_<D>.pt (the evaluation's)")
    p.add_argument("--user_offset", type=int, default=0,
                   help="the evaluations on the users after the first K of the draw (evaluate_run.py --user_offset)")
    args = p.parse_args(argv)
    data = load_processed(args.dataset)
    ranker, _ = load_ranker(args.ranker_ckpt or checkpoints_dir() / f"sasrec_{args.dataset}.pt",
                            expect_id_map=data.id_map_sha256)
    out = {}
    for tag in args.runs:
        path = eval_dir(args.dataset, tag, args.user_offset) / "explanations.jsonl"
        _, records = load_run(args.dataset, tag, args.user_offset)
        if not any("faith1" in r and "shown" in r for r in records):
            raise InputError(path, "rows with faith1 and shown", "none", "Evaluate the run again.")
        out[tag] = s = split(records, reason_groups(records, ranker))
        for g, part in s.items():
            levels = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(part["level"].items()))
            diffs = "; ".join(f"{k} − warm_start {100 * c['diff']:+.1f} ± {100 * c['se']:.1f} pts (p {c['p']:.3g})"
                              for k, c in part["vs"].items())
            print(f"{tag:16s} top contributor {g:6s} n {part['n']:3d}  faith@1: {levels}  {diffs}")
    return out


if __name__ == "__main__":
    run_cli(main)
