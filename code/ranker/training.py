"""SASRec training (Kang & McAuley, ICDM 2018): the loop, model selection and resume. No CLI here.

``train_model(cfg, data)`` trains on the train sequences, evaluates validation NDCG@10 (full ranking,
seen items masked) every ``eval_every`` epochs, keeps the best weights, stops after ``patience``
evaluations without improvement, and returns the best model. The test split is not touched here: the
entry script evaluates it once, on the selected model.

Resume: with ``resume_path`` the full training state (model, optimizer, every RNG, epoch, best weights,
patience counter, history) is written atomically after each epoch; a run started with the same path
continues from it, and on CPU ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..common import atomic
from ..common.device import resolve_device
from ..common.seeding import rng_state, seed_everything, set_rng_state
from . import data as D
from .evaluate import evaluate
from .model import SASRec, SASRecConfig, SASRecHyper

log = logging.getLogger("recrl")
# config fields that do not change the numbers: a run may resume with other values for them
_RESUME_FREE = ("threads", "eval_batch_size")


@dataclasses.dataclass
class SASRecTrainConfig(SASRecHyper):
    """The ranker stage's config (``train_sasrec.py`` flags, ``experiments/sasrec.yaml`` keys): the model's
    hyperparameters (inherited from :class:`SASRecHyper`, declared there once) plus the training settings."""

    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    # optimisation
    loss: str = dataclasses.field(default="ce", metadata={
        "choices": ["ce", "bce"], "help": "ce: softmax over all items at every position; bce: paper, 1 negative"})
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    patience: int = dataclasses.field(default=10, metadata={"help": "evaluations without val improvement"})
    window_stride: int = dataclasses.field(default=0, metadata={"help": "training window step (0: max_len)"})
    grad_clip: float = dataclasses.field(default=0.0, metadata={"help": "max grad norm (0: off)"})
    eval_every: int = 1
    eval_batch_size: int = 1024
    seed: int = 0
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cpu | cuda"})
    threads: int = dataclasses.field(default=2, metadata={"help": "torch CPU threads"})

    def model_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(n_items=n_items, **{f.name: getattr(self, f.name) for f in dataclasses.fields(SASRecHyper)})


def sequence_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, loss: str,
                  negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Next-item loss averaged over every non-padding position.

    ``ce``: softmax cross-entropy over all N items (padding excluded) — the stronger variant (e.g.
    Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold Loss: is BERT4Rec really better than
    SASRec?"). ``bce``: the paper's binary cross-entropy with one sampled negative per position.
    """
    h = model(inputs)
    keep = targets > 0
    E = model.item_table
    if loss == "ce":
        logits = h[keep] @ E[1:].T  # (P, N): column j is item j+1; padding is never a class
        return F.cross_entropy(logits, targets[keep] - 1)
    if loss == "bce":
        pos = (h * E[targets]).sum(-1)[keep]
        neg = (h * E[negatives]).sum(-1)[keep]
        return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
            F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
    raise ValueError(f"loss must be ce|bce, got {loss!r}")


def _state(model, opt, gen, epoch, best_state, best_metric, best_epoch, bad_evals, history, cfg) -> dict:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "rng": rng_state(), "epoch": epoch, "best_state": best_state, "best_metric": best_metric,
            "best_epoch": best_epoch, "bad_evals": bad_evals, "history": history,
            "config": dataclasses.asdict(cfg)}


def train_model(cfg: SASRecTrainConfig, data, *, resume_path: str | Path | None = None,
                metrics_log=None, progress: bool = False,
                stop_after_epoch: int | None = None,
                on_epoch: Callable[[dict], Any] | None = None) -> tuple[SASRec, list[dict]]:
    """Train SASRec on ``data`` (a ``Processed``) → (best model by val NDCG@10, per-epoch history).

    ``stop_after_epoch`` returns right after that epoch's resume state is written (simulates a kill,
    for tests). ``metrics_log`` (a ``MetricsLog``) receives one row per epoch.
    """
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    win = D.train_windows(data.sequences("train"), cfg.max_len, cfg.window_stride or None)
    user_items = D.item_mask(data.sequences("train"), data.n_items) if cfg.loss == "bce" else None
    inputs, targets = win.inputs.to(device), win.targets.to(device)

    model = SASRec(cfg.model_config(data.n_items)).to(device)
    # Adam with β2 = 0.98 as in the paper (§IV-D); AdamW so weight_decay, when set, is decoupled
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order and BCE negatives
    start_epoch, best_metric, best_epoch, bad_evals = 1, -1.0, 0, 0
    best_state: dict | None = None
    history: list[dict] = []

    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.exists():
        st = torch.load(resume_path, map_location=device, weights_only=True)
        diff = {k: (st["config"].get(k), v) for k, v in dataclasses.asdict(cfg).items()
                if st["config"].get(k) != v and k not in _RESUME_FREE}
        if diff:
            log.warning("resume state %s was written with a different config %s; starting afresh", resume_path, diff)
        else:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            gen.set_state(st["generator"])
            set_rng_state(st["rng"])
            start_epoch, best_metric, best_epoch = st["epoch"] + 1, st["best_metric"], st["best_epoch"]
            bad_evals, best_state, history = st["bad_evals"], st["best_state"], st["history"]
            log.info("resumed from %s at epoch %d (best val ndcg@10 %.4f at epoch %d)", resume_path,
                     st["epoch"], best_metric, best_epoch)

    n = len(inputs)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if bad_evals >= cfg.patience:
            break
        # ---- ALGO: one epoch over shuffled windows ----
        model.train()
        t0 = time.time()
        total, count = 0.0, 0
        it = D.batches(n, cfg.batch_size, gen)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=(n + cfg.batch_size - 1) // cfg.batch_size, desc=f"epoch {epoch}", leave=False)
        for idx in it:
            x, y = inputs[idx.to(device)], targets[idx.to(device)]
            neg = None
            if cfg.loss == "bce":
                neg = D.sample_train_negatives(y.cpu(), user_items[win.users[idx]], gen).to(device)
            loss = sequence_loss(model, x, y, cfg.loss, neg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        row: dict[str, Any] = {"epoch": epoch, "train/loss": total / count, "charts/epoch_s": time.time() - t0}

        # ---- selection on validation (full ranking, seen masked) ----
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t1 = time.time()
            res = evaluate(model, data, "valid", batch_size=cfg.eval_batch_size, protocols=("full_masked",))
            m = res["metrics"]["full_masked"]
            row.update({"valid/full_masked/ndcg@10": m["ndcg@10"], "valid/full_masked/hr@10": m["hr@10"],
                        "charts/eval_s": time.time() - t1})
            if m["ndcg@10"] > best_metric:
                best_metric, best_epoch, bad_evals = m["ndcg@10"], epoch, 0
                best_state = copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})
            else:
                bad_evals += 1
            log.info("epoch %d loss %.4f val ndcg@10 %.4f hr@10 %.4f (best %.4f @%d) %.1fs", epoch,
                     row["train/loss"], m["ndcg@10"], m["hr@10"], best_metric, best_epoch, row["charts/epoch_s"])
        history.append(row)
        if metrics_log is not None:
            metrics_log.log(row, step=epoch)
        if on_epoch is not None:
            on_epoch(row)
        if resume_path is not None:
            atomic.save_torch(resume_path, _state(model, opt, gen, epoch, best_state, best_metric, best_epoch,
                                                  bad_evals, history, cfg))
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return model, history

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
