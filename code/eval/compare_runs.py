"""Pair two evaluated runs' explainers on the same users (e.g. shielded − frozen on one seed).

    python code/eval/compare_runs.py --dataset ml100k --runs learn_wf3 learn_wf3_frozen [--system recrl]

``evaluate_run.py`` compares each run's explainer with the warm start inside the run. Two runs evaluated
with the same protocol (``--n_users``, seed, decoding) explain the same (user, item) pairs, so their
difference is a paired one too: per field of ``compare.FIELDS``, the mean of per-pair differences A − B
with its paired SE, 95% t interval and p-value (``compare.compare_runs``). ``q`` and ``ctr`` are compared
only when both runs scored with the same quality config (``eval.json → quality``): a run trained with
``--w_faithfulness`` scores q with a faithfulness term, so its q is not the other run's q.

Reads ``logs/<D>/<run>/{eval.json,explanations.jsonl}``; writes ``logs/<D>/compare_<A>_vs_<B>.json`` and
prints a table. ``--user_offset K`` pairs the runs' evaluations on the confirmation users instead
(``evaluate_run.py --user_offset K``: ``logs/<D>/<run>/users_from<K>/``; writes
``compare_<A>_vs_<B>_users_from<K>.json``).
"""

from __future__ import annotations

import argparse
import json

from shielded_recrl.common import atomic
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.paths import eval_dir, logs_dir
from shielded_recrl.eval.compare import FIELDS, compare_runs

QUALITY_FIELDS = ("q", "ctr")  # their values depend on the quality config the run was scored with


def load_run(dataset: str, tag: str, user_offset: int = 0) -> tuple[dict, list[dict]]:
    folder = eval_dir(dataset, tag, user_offset)
    ev, ex = folder / "eval.json", folder / "explanations.jsonl"
    for path in (ev, ex):
        if not path.exists():
            raise InputError(path, "an evaluated run", "no such file",
                             f"Run: python code/eval/evaluate_run.py --dataset {dataset} --tag {tag}"
                             + (f" --user_offset {user_offset}" if user_offset else ""))
    try:
        return json.loads(ev.read_text()), [json.loads(line) for line in ex.read_text().splitlines() if line]
    except json.JSONDecodeError as err:
        raise InputError(ev if "eval" in str(err) else ex, "valid JSON", str(err)) from None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--runs", nargs=2, required=True, metavar=("A", "B"), help="two run tags; reports A − B")
    p.add_argument("--system", default="recrl", help="the system compared across the runs (default: the trained one)")
    p.add_argument("--user_offset", type=int, default=0,
                   help="compare the evaluations on the users after the first K of the draw (evaluate_run.py "
                        "--user_offset K); 0: the default evaluations")
    args = p.parse_args(argv)
    (ev_a, rec_a), (ev_b, rec_b) = (load_run(args.dataset, t, args.user_offset) for t in args.runs)
    for key in ("n_users", "decoding"):
        if ev_a.get(key) != ev_b.get(key):
            raise InputError(eval_dir(args.dataset, args.runs[1], args.user_offset) / "eval.json",
                             f"{key} = {ev_a.get(key)!r} as in run {args.runs[0]}", repr(ev_b.get(key)),
                             "Evaluate both runs with the same protocol.")
    same_q = ev_a.get("quality") is not None and ev_a.get("quality") == ev_b.get("quality")
    fields = {f: s for f, s in FIELDS.items() if same_q or f not in QUALITY_FIELDS}
    try:
        diffs = compare_runs(rec_a, rec_b, args.system, fields)
    except ValueError as err:
        raise InputError(eval_dir(args.dataset, args.runs[1], args.user_offset) / "explanations.jsonl",
                         f"the pairs run {args.runs[0]} explains", str(err)) from None
    result = {"dataset": args.dataset, "a": args.runs[0], "b": args.runs[1], "system": args.system,
              "user_offset": args.user_offset,
              "protocol": "A − B per (user, item) pair of the slate set, same users and items in both runs; "
                          "paired SE, 95% t interval, two-sided paired t-test (code/eval/compare.py)",
              "steps": [ev_a.get("step"), ev_b.get("step")],
              "not_compared": {} if same_q else {f: "the runs' quality configs differ (or one is not recorded)"
                                                for f in QUALITY_FIELDS},
              "diff": diffs}
    suffix = f"_users_from{args.user_offset}" if args.user_offset else ""
    out = logs_dir() / args.dataset / f"compare_{args.runs[0]}_vs_{args.runs[1]}{suffix}.json"
    atomic.write_json(out, result)
    print(f"{args.system}: {args.runs[0]} − {args.runs[1]} ({args.dataset}, {next(iter(diffs.values()))['n']} pairs)")
    print(f"{'field':<16} {'A':>9} {'B':>9} {'A − B':>9} {'SE':>8} {'p':>8}")
    for field, c in diffs.items():
        print(f"{field:<16} {c['mean_system']:9.4f} {c['mean_baseline']:9.4f} {c['diff']:+9.4f} {c['se']:8.4f} "
              f"{c['p']:8.3g}")
    for field, why in result["not_compared"].items():
        print(f"{field:<16} not compared: {why}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    run_cli(main)
