"""Benchmark the SASRec ranker: seconds per training epoch and for a full-ranking evaluation of all users,
or, with ``--items``, one training step per loss on a synthetic catalogue.

    python scripts/bench_ranker.py [--dataset ml100k] [--epochs 3] [--threads 2] [--device cpu]
    python scripts/bench_ranker.py --items 712000 --losses ce ce_chunked sampled_softmax gbce [--windows 2000000]

A benchmark, not a test: it uses the dataset's config from experiments/sasrec.yaml, trains a fresh
model for a few epochs (no checkpoint written) and reports medians. Targets (DESIGN.md §7, ML-100K on 2
CPU cores): training ≤ 3 minutes in all, full-ranking evaluation of all users ≤ 5 s. Writes
experiments/bench/ranker_<D>.json.

``--items N`` (catalogue scale, issue #15): for each loss, in its own child process (so its peak RSS is
its own), builds SASRec over N items (hidden 64, 2 layers, windows of 50) and times ``--steps`` training
steps (forward, loss, backward, AdamW) on a batch of ``--batch_size`` synthetic windows whose 50
positions all have a target — an upper bound for real windows, which are often shorter. ``ce_chunked``
is ``loss: ce`` with ``ce_chunk_items``. Full CE is skipped, with the reason, when its logits alone
(positions × N × 4 B, three times over: logits, log-softmax, gradient) exceed the memory available; a
child killed by the kernel is reported as such. Prints seconds per step, peak RSS and the extrapolation to
one epoch of ``--windows`` windows. Writes experiments/bench/ranker_losses_<N>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from shielded_recrl.common import atomic
from shielded_recrl.common.configs import load_yaml, merge_yaml
from shielded_recrl.common.paths import checkpoints_dir, experiments_dir
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.ranker import losses as L
from shielded_recrl.ranker.evaluate import evaluate
from shielded_recrl.ranker.model import SASRec
from shielded_recrl.ranker.training import SASRecTrainConfig, sequence_loss, train_model

STEP_LOSSES = ("ce", "ce_chunked", "sampled_softmax", "gbce")


def _step_config(args, name: str) -> SASRecTrainConfig:
    loss = "ce" if name == "ce_chunked" else name
    return SASRecTrainConfig(loss=loss, ce_chunk_items=args.ce_chunk_items if name == "ce_chunked" else 0,
                             n_negatives=args.n_negatives, batch_size=args.batch_size, max_len=50, hidden=64,
                             device="cpu", threads=args.threads)


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def _step_child(args) -> None:
    """One loss's steps in this process; prints one JSON line (seconds per step, peak RSS)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = _step_config(args, args.step_child)
    model = SASRec(cfg.model_config(args.items))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, args.items + 1, (cfg.batch_size, cfg.max_len), generator=gen)
    y = torch.randint(1, args.items + 1, (cfg.batch_size, cfg.max_len), generator=gen)
    sampler = L.negative_sampler("uniform", args.items)
    beta = L.gbce_beta(cfg.n_negatives, args.items, cfg.gbce_t) if cfg.loss == "gbce" else 1.0
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux → MiB
    times = []
    for step in range(args.warmup + args.steps):
        t = time.perf_counter()
        neg = sampler.sample(cfg.n_negatives, gen) if cfg.loss in ("sampled_softmax", "gbce") else None
        loss = sequence_loss(model, x, y, cfg.loss, neg, log_q=sampler.log_q, beta=beta,
                             ce_chunk_items=cfg.ce_chunk_items)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    print(json.dumps({"step_s": times, "loss": float(loss), "setup_rss_mib": round(setup_rss),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def bench_steps(args) -> dict:
    """One child process per loss (``--items`` mode); see the module docstring."""
    positions = args.batch_size * 50
    steps_per_epoch = math.ceil(args.windows / args.batch_size)
    rows = {}
    for name in args.losses:
        row: dict = {"loss": name}
        if name == "ce_chunked":
            row["ce_chunk_items"] = args.ce_chunk_items
        if name in ("sampled_softmax", "gbce"):
            row["n_negatives"] = args.n_negatives
        if name == "ce":
            need = 3 * positions * args.items * 4
            row["logits_gib"] = round(positions * args.items * 4 / 2**30, 2)
            if need > _available_bytes():
                row["skipped"] = (f"full CE logits {positions} positions x {args.items} items x 4 B = "
                                  f"{row['logits_gib']} GiB, ~{need / 2**30:.1f} GiB with log-softmax and gradient; "
                                  f"{_available_bytes() / 2**30:.1f} GiB available")
                print(f"[bench] {name}: skipped: {row['skipped']}")
                rows[name] = row
                continue
        argv = [sys.executable, __file__, "--step_child", name, "--items", str(args.items), "--threads",
                str(args.threads), "--batch_size", str(args.batch_size), "--ce_chunk_items", str(args.ce_chunk_items),
                "--n_negatives", str(args.n_negatives), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        t = time.time()
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            why = f"killed by signal {-res.returncode} (the kernel's OOM killer sends 9)" if res.returncode < 0 \
                else f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}"
            row["failed"] = why
            print(f"[bench] {name}: failed after {time.time() - t:.0f}s: {why}")
        else:
            row.update(json.loads(res.stdout.strip().splitlines()[-1]))
            step_s = statistics.median(row["step_s"])
            row["step_s_median"] = round(step_s, 3)
            row["epoch_h"] = round(step_s * steps_per_epoch / 3600, 2)
            print(f"[bench] {name}: {step_s:.2f} s/step, peak RSS {row['peak_rss_mib']} MiB "
                  f"(after setup {row['setup_rss_mib']} MiB); one epoch of {args.windows} windows = "
                  f"{steps_per_epoch} steps ≈ {row['epoch_h']} h")
        rows[name] = row
    out = {"items": args.items, "batch_size": args.batch_size, "positions_per_step": positions,
           "threads": args.threads, "windows": args.windows, "steps_per_epoch": steps_per_epoch,
           "note": "synthetic windows, all 50 positions with a target; hidden 64, 2 layers; CPU",
           "losses": rows, "torch": torch.__version__}
    print(json.dumps(out, indent=2))
    atomic.write_json(experiments_dir() / "bench" / f"ranker_losses_{args.items}.json", out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    g = p.add_argument_group("one training step per loss on a synthetic catalogue (--items)")
    g.add_argument("--items", type=int, default=0, help="catalogue size N (Amazon Books 5-core: ~712000)")
    g.add_argument("--losses", nargs="+", choices=STEP_LOSSES, default=list(STEP_LOSSES))
    g.add_argument("--batch_size", type=int, default=256, help="windows per step (of 50 positions)")
    g.add_argument("--ce_chunk_items", type=int, default=16384, help="items per chunk for ce_chunked")
    g.add_argument("--n_negatives", type=int, default=256, help="for sampled_softmax and gbce")
    g.add_argument("--steps", type=int, default=1, help="timed steps per loss")
    g.add_argument("--warmup", type=int, default=0, help="untimed steps before them")
    g.add_argument("--windows", type=int, default=2_000_000,
                   help="training windows per epoch, for the extrapolation (Amazon Books 5-core: ~1.85M users, "
                        "most with one 50-item window)")
    g.add_argument("--step_child", default=None, help=argparse.SUPPRESS)  # internal: run one loss, print JSON
    args = p.parse_args(argv)
    if args.step_child:
        return _step_child(args)
    if args.items:
        return bench_steps(args)
    torch.set_num_threads(args.threads)
    yaml_path = experiments_dir() / "sasrec.yaml"
    cfg = merge_yaml(SASRecTrainConfig, SASRecTrainConfig(dataset=args.dataset), load_yaml(yaml_path), yaml_path,
                     args.dataset)
    cfg = dataclasses.replace(cfg, epochs=args.epochs, patience=args.epochs + 1, device=args.device,
                              threads=args.threads)
    data = load_processed(args.dataset)

    t0 = time.time()
    model, history = train_model(cfg, data)
    train_s = time.time() - t0
    epoch_s = [h["charts/epoch_s"] for h in history]
    valid_eval_s = [h["charts/eval_s"] for h in history]
    evaluate(model, data, "test", protocols=("full_masked",))  # warm-up
    full = []
    for _ in range(3):
        t = time.time()
        evaluate(model, data, "test", protocols=("full_masked",))
        full.append(time.time() - t)
    t = time.time()
    evaluate(model, data, "test")
    all_protocols_s = time.time() - t
    # epochs a full run took (from its manifest, if the ranker was trained) → projected full training time
    man = checkpoints_dir() / f"sasrec_{args.dataset}.manifest.json"
    epochs_run = json.loads(man.read_text())["metrics"]["epochs_run"] if man.exists() else None
    out = {
        "dataset": args.dataset, "threads": args.threads, "device": args.device, "users": data.n_users,
        "items": data.n_items, "config": dataclasses.asdict(cfg),
        "epoch_s_median": round(statistics.median(epoch_s[1:] or epoch_s), 3),
        "epoch_s_first": round(epoch_s[0], 3),
        "valid_eval_full_masked_s_median": round(statistics.median(valid_eval_s), 3),
        "test_eval_full_masked_s_median": round(statistics.median(full), 3),
        "test_eval_all_protocols_s": round(all_protocols_s, 3),
        "train_s_for_run": round(train_s, 2),
        "full_run_epochs": epochs_run,
        "projected_full_run_train_s": (
            round(epochs_run * (statistics.median(epoch_s) + statistics.median(valid_eval_s)), 1) if epochs_run else None),
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=2))
    atomic.write_json(experiments_dir() / "bench" / f"ranker_{args.dataset}.json", out)
    return out


if __name__ == "__main__":
    main()
