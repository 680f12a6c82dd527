"""The title-masked judge's item part, split by how many titles each text names (a diagnostic).

    python scripts/judge_mask_split.py --dataset ml100k --runs learn_g8 learn_g8_s1 learn_g8_s2

``judge_item_masked`` (``code/eval/judge.py``) replaces every title an explanation names, and the item's own
title in its catalogue text, by the same words, so a text that names more titles correctly shares more words
with its item under the mask. For each evaluated run (``logs/<D>/<run>/explanations.jsonl``, slate set) this
prints system − warm start of ``judge_item_masked`` and ``judge_item`` ± paired SE over users: on all pairs,
on the pairs whose two texts have the same number of masked titles (where the mask adds the same words to
both), and the number of pairs where the system's text has more / fewer. The split is made after the texts
were written, so read it as a decomposition of the all-pairs number, not as a test. Writes nothing.
"""

from __future__ import annotations

import argparse

from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.paths import logs_dir
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.eval.compare import compare_systems
from shielded_recrl.eval.compare_runs import load_run
from shielded_recrl.eval.judge import masked_title_count
from shielded_recrl.trainer.quality import TitleIndex

FIELDS = {"judge_item_masked": "slate", "judge_item": "slate"}


def split(records: list[dict], titles, system: str = "recrl", baseline: str = "warm_start") -> dict:
    """``{"all" | "same_count": {field: Comparison dict}, "more": n, "fewer": n}`` of ``system`` − ``baseline``."""
    slate = [r for r in records if r["set"] == "slate" and r["system"] in (system, baseline)]
    count = {(r["system"], int(r["user_id"])): masked_title_count(titles, r["text"], r["item_id"]) for r in slate}
    users = {u for s, u in count if s == system}
    if any((baseline, u) not in count for u in users):
        raise ValueError(f"{system} and {baseline} must explain the same users")
    diff = {u: count[(system, u)] - count[(baseline, u)] for u in users}
    same = [r for r in slate if diff[int(r["user_id"])] == 0]
    return {"all": compare_systems(slate, baseline, FIELDS)[system],
            "same_count": compare_systems(same, baseline, FIELDS)[system] if same else {},
            "more": sum(d > 0 for d in diff.values()), "fewer": sum(d < 0 for d in diff.values())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--runs", nargs="+", required=True, help="evaluated run tags")
    args = p.parse_args(argv)
    titles = TitleIndex(load_processed(args.dataset).items)
    out = {}
    for tag in args.runs:
        path = logs_dir() / args.dataset / tag / "explanations.jsonl"
        _, records = load_run(args.dataset, tag)
        if not any("judge_item_masked" in r for r in records):
            raise InputError(path, "rows with judge_item_masked", "none (evaluated before the masked judge)",
                             f"Run: python code/eval/evaluate_run.py --dataset {args.dataset} --tag {tag} --rescore "
                             "(with the evaluation's own flags)")
        out[tag] = s = split(records, titles)
        for part in ("all", "same_count"):
            cells = [f"{f} {1e3 * c['diff']:+.1f} ± {1e3 * c['se']:.1f} ×10⁻³ (p {c['p']:.3g})"
                     for f, c in s[part].items()]
            n = next(iter(s[part].values()))["n"] if s[part] else 0
            print(f"{tag:16s} {part:10s} n {n:3d}  " + "; ".join(cells))
        print(f"{tag:16s} system names more titles in {s['more']} pairs, fewer in {s['fewer']}")
    return out


if __name__ == "__main__":
    run_cli(main)
