"""Benchmark the dataset stage on a synthetic ratings.csv in the ML-25M format (issue 2, "Performance").

    python scripts/bench_preprocess.py --rows 5000000 25000000 [--out_dir DIR] [--keep]

For each size: writes ``<out_dir>/<rows>/data/raw/ml25m/ml-25m/{ratings,movies}.csv`` (seeded, ML-25M's
shape: ~155 ratings per user, >= 20 per user, Zipf-like film popularity, half-star ratings, per-user
time spans), then runs the real entry (``code/dataset/make_splits.py --dataset ml25m --force``) in a
child process with ``RECRL_ROOT`` pointing there, and prints its wall time and peak resident memory
(the child's ``ru_maxrss`` from ``os.wait4``: everything pandas/pyarrow allocate, not only Python
objects). Target (issue 2): <= 3 min and <= 6 GB for 25M rows on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from shielded_recrl.common.paths import repo_root

ML25M_RATINGS_PER_USER = 25_000_095 / 162_541  # ML-25M's README figures
ML25M_FILMS_PER_RATING = 62_423 / 25_000_095


def synth_ratings(rows: int, seed: int = 0) -> tuple[pa.Table, int]:
    """``rows`` ratings of ~rows/155 users; every user >= 20 ratings, films drawn Zipf-like, no repeats."""
    rng = np.random.default_rng(seed)
    n_users = max(1, int(rows / ML25M_RATINGS_PER_USER))
    n_items = max(100, int(rows * ML25M_FILMS_PER_RATING))
    per_user = 20 + rng.pareto(1.3, n_users) * 40
    per_user = np.maximum(20, (per_user / per_user.sum() * rows)).astype(np.int64)
    per_user[: rows - per_user.sum()] += 1 if rows > per_user.sum() else 0
    per_user = np.minimum(per_user, n_items // 2)
    user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), per_user)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item = rng.choice(n_items, size=len(user), p=pop / pop.sum()) + 1
    # one rating per (user, film), like the real file: drop repeated pairs, then top the deficit up
    # with uniformly drawn films (which rarely collide) until the requested size is reached
    key = np.unique(user * (n_items + 1) + item)
    while len(key) < rows:
        extra_u = rng.choice(user, size=int((rows - len(key)) * 1.05) + 10)
        extra = extra_u * (n_items + 1) + rng.integers(1, n_items + 1, len(extra_u))
        key = np.unique(np.concatenate([key, extra]))
    key = rng.permutation(key)[:rows]
    key.sort()  # the real file is sorted by user, then film
    user, item = key // (n_items + 1), key % (n_items + 1)
    n = len(user)
    rating = rng.integers(1, 11, n) / 2.0
    start = rng.integers(789_652_009, 1_574_327_703, n_users)  # ML-25M's time range
    ts = start[user - 1] + rng.integers(0, 3 * 365 * 86400, n)
    table = pa.table({"userId": user, "movieId": item, "rating": rating, "timestamp": ts})
    return table, n_items


def write_inputs(folder: Path, rows: int, seed: int) -> int:
    raw = folder / "data" / "raw" / "ml25m" / "ml-25m"
    raw.mkdir(parents=True, exist_ok=True)
    table, n_items = synth_ratings(rows, seed)
    opts = pacsv.WriteOptions(quoting_style="none")  # ML-25M's header and numbers are unquoted
    pacsv.write_csv(table, raw / "ratings.csv", opts)
    genres = np.array(["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi", "Children", "Horror"])
    ids = np.arange(1, n_items + 1)
    with open(raw / "movies.csv", "w") as f:
        f.write("movieId,title,genres\n")
        for i in ids:  # a comma in every 7th title, quoted as in the real file
            title = f'"Film {i}, The ({1950 + i % 70})"' if i % 7 == 0 else f"Film {i} ({1950 + i % 70})"
            f.write(f"{i},{title},{genres[i % 8]}|{genres[(i * 3) % 8]}\n")
    return table.num_rows


def run_child(folder: Path) -> dict:
    """The real CLI in a child process: wall time and the child's own peak RSS."""
    env = dict(os.environ, RECRL_ROOT=str(folder))
    cmd = [sys.executable, str(repo_root() / "code" / "dataset" / "make_splits.py"), "--dataset", "ml25m", "--force"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(out, file=sys.stderr)
        raise SystemExit(f"preprocessing failed with status {proc.returncode}")
    stats = json.loads((folder / "data" / "proc" / "ml25m" / "stats.json").read_text())
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss: KiB on Linux
            "users": stats["users"], "items": stats["items"], "interactions": stats["interactions"],
            "log": [line for line in out.splitlines() if " INFO " in line]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[5_000_000, 25_000_000])
    p.add_argument("--out_dir", default=None, help="where the synthetic roots go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic data and outputs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    base = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="recrl-bench-"))
    results = []
    for rows in args.rows:
        folder = base / str(rows)
        t0 = time.time()
        n = write_inputs(folder, rows, args.seed)
        print(f"[bench] {rows:,} rows requested → {n:,} written in {time.time() - t0:.0f}s; preprocessing …", flush=True)
        res = run_child(folder)
        for line in res.pop("log"):
            print("   ", line)
        res = {"rows": n, "cores": len(os.sched_getaffinity(0)), **res}
        print(f"[bench] {json.dumps(res)}", flush=True)
        results.append(res)
        if not args.keep:
            shutil.rmtree(folder)
    print("\nrows        wall_s  peak_rss_gb  users    items   interactions (cores: %d)" % results[0]["cores"])
    for r in results:
        print(f"{r['rows']:<11,} {r['wall_s']:<7} {r['peak_rss_gb']:<12} {r['users']:<8} {r['items']:<7} {r['interactions']:,}")
    if not args.keep and not args.out_dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
