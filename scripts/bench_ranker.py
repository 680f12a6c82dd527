"""Benchmark the SASRec ranker: seconds per training epoch and for a full-ranking evaluation of all users.

    python scripts/bench_ranker.py [--dataset ml100k] [--epochs 3] [--threads 2] [--device cpu]

A benchmark, not a test: it uses the dataset's config from experiments/sasrec.yaml, trains a fresh
model for a few epochs (no checkpoint written) and reports medians. Targets (DESIGN.md §7, ML-100K on 2
CPU cores): training ≤ 3 minutes in all, full-ranking evaluation of all users ≤ 5 s. Writes
experiments/bench/ranker_<D>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from shielded_recrl.common import atomic
from shielded_recrl.common.configs import load_yaml, merge_yaml
from shielded_recrl.common.paths import checkpoints_dir, experiments_dir
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.ranker.evaluate import evaluate
from shielded_recrl.ranker.training import SASRecTrainConfig, train_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
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
