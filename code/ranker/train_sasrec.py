"""Train the SASRec ranker on one dataset (Kang & McAuley, ICDM 2018; DESIGN.md §1, §5).

    python code/ranker/train_sasrec.py --dataset ml100k [--config experiments/sasrec.yaml] [--epochs N ...]
    python -m shielded_recrl.ranker.train_sasrec --dataset ml100k

Reads ``data/proc/<D>/``; selects the epoch by validation NDCG@10 (full ranking, seen items masked) with
early stopping; evaluates the test split once, with the selected model, under every protocol next to
the most-popular and random baselines. Writes ``checkpoints/sasrec_<D>.pt`` (weights_only-loadable),
``checkpoints/sasrec_<D>.manifest.json`` and ``logs/<D>/ranker/{metrics.jsonl,train.log}``. A killed
run resumes from ``checkpoints/sasrec_<D>.resume.pt`` when started again with the same config.

Losses (``--loss``; docs/ranker_losses.md), recorded under ``loss`` in the checkpoint and its manifest:
  ce               softmax over all items (default); --ce_chunk_items K scores K items at a time, the
                   same loss and gradients without the positions x items logits (large catalogues)
  bce              the SASRec paper's: one sampled negative per position
  sampled_softmax  softmax over the positive and --n_negatives negatives shared by the batch, drawn
                   --negatives uniform|popularity (train-split counts), logits corrected by -log Q
  gbce             gSASRec's generalised BCE: --n_negatives uniform negatives, calibration --gbce_t

Several GPUs, one run (data parallel, DDP; --batch_size is the global batch):
    accelerate launch --multi_gpu --num_processes N code/ranker/train_sasrec.py --dataset D ...
Each rank trains on its part of every batch and rank 0 evaluates; rank 0 alone writes the checkpoint,
manifest, logs and resume state, the same files as one process (code/common/distributed.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import torch

from shielded_recrl.common import atomic, distributed, manifest
from shielded_recrl.common.configs import parse_config
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import MetricsLog, setup_logging
from shielded_recrl.common.paths import checkpoints_dir, logs_dir, proc_dir, resolve_user_path
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.ranker import baselines
from shielded_recrl.ranker.checkpoint import save_ranker
from shielded_recrl.ranker.data import eval_inputs
from shielded_recrl.ranker.evaluate import evaluate, evaluate_scorer, flat, table
from shielded_recrl.ranker.training import SASRecTrainConfig, loss_record, train_model, unused_settings

STAGE = "ranker"
PROTOCOL_NOTE = {
    "full_masked": "rank among all items, the user's input-history items masked (primary)",
    "full_unmasked": "rank among all items, nothing masked (RecBole's protocol for sequential models)",
    "sampled100": "rank among 100 seeded negatives the user never interacted with (SASRec paper)",
    "ties": "a tied candidate counts half: NDCG/HR are averaged over the target's possible positions under random "
            "tie-breaking (metrics.Ranks); non-finite scores are refused",
}


def _extra(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # --help shows the docstring's loss table as laid out
    p.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/sasrec_<D>.pt)")
    p.add_argument("--fresh", action="store_true", help="ignore (and overwrite) an existing resume state")
    p.add_argument("--force", action="store_true",
                   help="retrain even when the checkpoint's manifest says it is complete for this config and data")


def parse(argv=None) -> tuple[SASRecTrainConfig, object]:
    """Flags → config: one flag per field of SASRecTrainConfig (the model's hyperparameters included)."""
    try:
        return parse_config(SASRecTrainConfig, argv, description=__doc__, default_yaml="experiments/sasrec.yaml",
                            extra_args=_extra)
    except ValueError as err:  # SASRecTrainConfig's own checks (e.g. n_negatives < 1)
        raise InputError("experiments/sasrec.yaml (or --config) and the flags", "a valid ranker config",
                         str(err), "Fix the key or flag it names.") from None


def main(argv=None):
    cfg, ns = parse(argv)
    started = time.time()
    torch.set_num_threads(cfg.threads)
    ckpt_path = resolve_user_path(ns.out) if ns.out else checkpoints_dir() / f"sasrec_{cfg.dataset}.pt"
    resume_path = ckpt_path.with_name(ckpt_path.stem + ".resume.pt")
    manifest_path = ckpt_path.with_name(ckpt_path.stem + ".manifest.json")
    log_dir = logs_dir() / cfg.dataset / STAGE
    ranks = distributed.init(cfg.device)  # one process, or this rank of an `accelerate launch`
    log = setup_logging(log_dir / "train.log" if ranks.is_main else None,
                        logging.INFO if ranks.is_main else logging.WARNING)  # rank 0 writes everything
    # execution settings and the settings the chosen loss does not read do not change the result
    if not ns.force and manifest.is_complete(manifest_path, STAGE, dataclasses.asdict(cfg),
                                             {"processed": proc_dir(cfg.dataset)},
                                             ignore=("threads", "device", "eval_batch_size", "ce_chunk_items")
                                             + unused_settings(cfg.loss)):
        print(f"[ranker] {ckpt_path} is complete for this config and data (use --force to retrain)")
        return manifest.read(manifest_path, STAGE)["metrics"]
    if ns.fresh and resume_path.exists() and ranks.is_main:
        resume_path.unlink()
    ranks.barrier()  # no rank reads a resume state rank 0 is deleting
    if ranks.is_main:
        print(f"[ranker] config ({ns.config or 'defaults'}):\n{json.dumps(dataclasses.asdict(cfg), indent=2)}")

    data = load_processed(cfg.dataset)
    with MetricsLog(log_dir / "metrics.jsonl", append=resume_path.exists(), enabled=ranks.is_main) as mlog:
        model, history = train_model(cfg, data, resume_path=resume_path, metrics_log=mlog, progress=True)
        if not ranks.is_main:  # the other ranks' work ends with training: rank 0 tests and writes
            return None
        train_s = time.time() - started
        evaluated = [h for h in history if "valid/full_masked/ndcg@10" in h]
        best = max(evaluated, key=lambda h: h["valid/full_masked/ndcg@10"])

        # Test once, on the selected model; baselines on the same splits and protocols.
        results = {split: {"sasrec": evaluate(model, data, split, seed=cfg.seed)} for split in ("valid", "test")}
        for split in ("valid", "test"):
            inputs = eval_inputs(data, split, cfg.max_len)
            train_seqs = data.sequences("train" if split == "valid" else "valid")
            results[split]["most_popular"] = evaluate_scorer(
                baselines.popularity_scorer(train_seqs, data.n_items, cfg.seed), inputs, seed=cfg.seed)
            results[split]["random"] = evaluate_scorer(baselines.random_scorer(data.n_items, cfg.seed), inputs,
                                                       seed=cfg.seed)
        metrics = {"best_epoch": best["epoch"], "epochs_run": history[-1]["epoch"], "train_wall_s": round(train_s, 1)}
        for split, rows in results.items():
            for name, res in rows.items():
                metrics.update(flat(res, f"{split}/{name}/"))
        mlog.log({k: v for k, v in metrics.items() if k.startswith("test/") or k.startswith("valid/")}, step=None)

    for split in ("valid", "test"):
        print(f"\n[ranker] {cfg.dataset} {split} ({len(data.targets(split))} users; ties: averaged over random tie-breaking)")
        print(table(results[split]))
    print("\nprotocols: " + "; ".join(f"{k} = {v}" for k, v in PROTOCOL_NOTE.items()))

    loss = loss_record(cfg, data.n_items)  # the loss and the settings it read (gbce: with its α, β)
    save_ranker(ckpt_path, model, extra={
        "dataset": cfg.dataset, "id_map_sha256": data.id_map_sha256, "train_config": dataclasses.asdict(cfg),
        "loss": loss, "metrics": metrics, "protocols": PROTOCOL_NOTE})
    m = manifest.build(STAGE, config=dataclasses.asdict(cfg), inputs={"processed": proc_dir(cfg.dataset)},
                       outputs={"checkpoint": ckpt_path}, seed=cfg.seed, metrics=metrics, started=started,
                       extra={"id_map_sha256": data.id_map_sha256, "loss": loss, "protocols": PROTOCOL_NOTE,
                              "history": history})
    atomic.write_json(manifest_path, m)
    if resume_path.exists():
        resume_path.unlink()  # the run is complete; its checkpoint and manifest supersede the resume state
    log.info("wrote %s (test full_masked ndcg@10 %.4f) and %s in %.0fs", ckpt_path,
             metrics["test/sasrec/full_masked/ndcg@10"], manifest_path, time.time() - started)
    return metrics


if __name__ == "__main__":
    run_cli(main)
