"""Cost of the shield and of the basis at ML-25M scale (DESIGN.md §7: shield overhead ≤ 2% of a PPO step).

    python scripts/bench_shield.py [--items 60000] [--d 128] [--rank 100] [--users 160000] [--repeats 20]

Times, on random tensors of the real shapes: one ``Shield.after_step`` (update projection + trust region +
padding row) on the item table, the AdamW step it follows (for scale), and the basis SVD of the stacked
[H; E] by the Gram-matrix eigendecomposition vs ``torch.linalg.svd``. Prints a table and writes
``experiments/bench/shield.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shielded_recrl.common import atomic
from shielded_recrl.common.paths import experiments_dir
from shielded_recrl.projection.basis import compute_basis, random_basis, stack
from shielded_recrl.projection.shield import Shield, ShieldConfig


def timed(fn, repeats: int) -> float:
    """Median seconds over ``repeats`` calls after a warm-up (the minimum is printed too: on a shared
    machine it is the better estimate of the uncontended cost)."""
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    timed.last_min = min(ts)
    return statistics.median(ts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=60000)
    ap.add_argument("--users", type=int, default=160000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--rank", type=int, default=100, help="rank r of Q (τ = 0.99 kept ~100 of 128 in tests)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ppo_step_s", type=float, default=1.0, help="a PPO step's time to compare with (s)")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    E = torch.nn.Parameter(torch.randn(args.items + 1, args.d, generator=g) * 0.05)
    Q = random_basis(args.d, args.rank, g)
    opt = torch.optim.AdamW([E], lr=1e-3, weight_decay=0.01)
    E.grad = torch.randn_like(E) * 1e-3
    out = {"items": args.items, "d": args.d, "rank": args.rank, "threads": torch.get_num_threads()}
    for name, cfg in (("shield update+trust", ShieldConfig(trust_radius=0.1)),
                      ("shield update only", ShieldConfig(trust_radius=None))):
        shield = Shield(E, Q, cfg)
        out[name] = timed(shield.after_step, args.repeats)
        out[name + " (min)"] = timed.last_min
    out["adamw step (reference)"] = timed(opt.step, args.repeats)
    out["adamw step (reference) (min)"] = timed.last_min
    for name in ("shield update+trust", "shield update only", "adamw step (reference)"):
        print(f"{name:<26} median {out[name] * 1e3:7.1f} ms, min {out[name + ' (min)'] * 1e3:7.1f} ms   "
              f"({100 * out[name] / args.ppo_step_s:.2f}% of a {args.ppo_step_s:g} s PPO step)")

    H = torch.randn(args.users, args.d, generator=g)
    Ei = torch.randn(args.items, args.d, generator=g)
    out["basis gram-eigh (users+items)"] = timed(lambda: compute_basis(H, Ei, 0.99), 3)
    M = stack(H, Ei).float()
    out["torch.linalg.svd (same matrix)"] = timed(lambda: torch.linalg.svd(M, full_matrices=False), 1)
    for name in ("basis gram-eigh (users+items)", "torch.linalg.svd (same matrix)"):
        print(f"{name:<32} {out[name]:7.3f} s   ({args.users + args.items} × {args.d})")
    atomic.write_json(experiments_dir() / "bench" / "shield.json", out)
    return out


if __name__ == "__main__":
    main()
