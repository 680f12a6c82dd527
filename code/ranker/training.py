"""SASRec training (Kang & McAuley, ICDM 2018): the loop, model selection and resume. No CLI here.

``train_model(cfg, data)`` trains on the train sequences, evaluates validation NDCG@10 (full ranking,
seen items masked) every ``eval_every`` epochs, keeps the best weights, stops after ``patience``
evaluations without improvement, and returns the best model. The test split is not touched here: the
entry script evaluates it once, on the selected model.

Losses (``loss``; :mod:`.losses`, docs/ranker_losses.md): ``ce`` full softmax (default; ``ce_chunk_items``
scores the item table in chunks, same loss and gradients), ``bce`` the paper's one negative,
``sampled_softmax`` logQ-corrected over ``n_negatives`` shared negatives, ``gbce`` gSASRec's.

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

from ..common import atomic, distributed
from ..common.device import resolve_device
from ..common.seeding import rank_seed, rng_state, seed_everything, set_rng_state
from . import data as D
from . import losses as L
from .evaluate import evaluate
from .model import SASRec, SASRecConfig, SASRecHyper

log = logging.getLogger("recrl")
LOSSES = ("ce", "bce", "sampled_softmax", "gbce")
# the settings each loss reads; the others do not change its numbers (not compared on resume or re-run)
LOSS_SETTINGS = {"ce": ("ce_chunk_items",), "bce": (), "sampled_softmax": ("negatives", "n_negatives"),
                 "gbce": ("n_negatives", "gbce_t")}
# config fields that do not change the numbers: a run may resume with other values for them.
# ce_chunk_items changes how the same loss is computed, not the loss (only float rounding): a run that ran
# out of memory may resume with chunks.
_RESUME_FREE = ("threads", "eval_batch_size", "ce_chunk_items")


@dataclasses.dataclass
class SASRecTrainConfig(SASRecHyper):
    """The ranker stage's config (``train_sasrec.py`` flags, ``experiments/sasrec.yaml`` keys): the model's
    hyperparameters (inherited from :class:`SASRecHyper`, declared there once) plus the training settings."""

    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    # optimisation
    loss: str = dataclasses.field(default="ce", metadata={
        "choices": list(LOSSES),
        "help": "ce: softmax over all items at every position; bce: the paper's, 1 negative; sampled_softmax: "
                "softmax over the positive and n_negatives shared negatives, logQ-corrected (Yi et al. 2019); "
                "gbce: gSASRec's generalised BCE, n_negatives uniform negatives (Petrov & Macdonald 2023)"})
    ce_chunk_items: int = dataclasses.field(default=0, metadata={
        "help": "ce: score the item table this many items at a time, the same loss and gradients in "
                "positions x chunk memory instead of positions x items (0: all items at once)"})
    negatives: str = dataclasses.field(default="uniform", metadata={
        "choices": list(L.NEGATIVE_KINDS),
        "help": "sampled_softmax: negatives drawn uniformly or by train-split popularity (gbce: uniform only)"})
    n_negatives: int = dataclasses.field(default=256, metadata={
        "help": "sampled_softmax, gbce: negatives per positive, one draw shared by the batch (gSASRec: 256)"})
    gbce_t: float = dataclasses.field(default=0.75, metadata={
        "help": "gbce: calibration t in [0, 1]; beta = 1 - t(1 - n_negatives/(N-1)); 0: plain BCE (gSASRec: 0.75)"})
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = dataclasses.field(default=128, metadata={
        "help": "training windows per step (accelerate launch: the global batch, split over the ranks)"})
    epochs: int = 200
    patience: int = dataclasses.field(default=10, metadata={"help": "evaluations without val improvement"})
    window_stride: int = dataclasses.field(default=0, metadata={"help": "training window step (0: max_len)"})
    grad_clip: float = dataclasses.field(default=0.0, metadata={"help": "max grad norm (0: off)"})
    eval_every: int = 1
    eval_batch_size: int = 1024
    seed: int = 0
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cpu | cuda"})
    threads: int = dataclasses.field(default=2, metadata={"help": "torch CPU threads"})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; found {self.loss!r}")
        if self.negatives not in L.NEGATIVE_KINDS:
            raise ValueError(f"negatives must be one of {L.NEGATIVE_KINDS}; found {self.negatives!r}")
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives must be ≥ 1; found {self.n_negatives}")
        if self.ce_chunk_items < 0:
            raise ValueError(f"ce_chunk_items must be ≥ 0 (0: all items at once); found {self.ce_chunk_items}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ValueError(f"gbce_t must be in [0, 1]; found {self.gbce_t}")
        if self.loss == "gbce" and self.negatives != "uniform":
            raise ValueError(f"gbce's beta assumes uniform negatives; found negatives {self.negatives!r}. "
                             "Set negatives: uniform, or use loss sampled_softmax for popularity negatives.")

    def model_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(n_items=n_items, **{f.name: getattr(self, f.name) for f in dataclasses.fields(SASRecHyper)})


def loss_record(cfg: SASRecTrainConfig, n_items: int) -> dict:
    """The loss and the settings it reads (plus gbce's α and β), as the checkpoint and manifest record it."""
    rec: dict[str, Any] = {"loss": cfg.loss, **{k: getattr(cfg, k) for k in LOSS_SETTINGS[cfg.loss]}}
    if cfg.loss == "gbce":
        rec.update(gbce_alpha=cfg.n_negatives / (n_items - 1),
                   gbce_beta=L.gbce_beta(cfg.n_negatives, n_items, cfg.gbce_t))
    return rec


def unused_settings(loss: str) -> tuple[str, ...]:
    """The loss settings ``loss`` does not read: other values for them do not change a run's numbers."""
    used = LOSS_SETTINGS[loss]
    return tuple(k for ks in LOSS_SETTINGS.values() for k in ks if k not in used)


def sequence_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, loss: str,
                  negatives: torch.Tensor | None = None, *, log_q: torch.Tensor | None = None,
                  beta: float = 1.0, ce_chunk_items: int = 0) -> torch.Tensor:
    """Next-item loss averaged over every non-padding position.

    ``ce``: softmax cross-entropy over all N items (padding excluded) — the stronger variant (e.g.
    Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold Loss: is BERT4Rec really better than
    SASRec?"); ``ce_chunk_items`` > 0 computes it in item chunks. ``bce``: the paper's binary cross-entropy
    with one sampled negative per position (``negatives`` (B, L)). ``sampled_softmax`` (``log_q``) and
    ``gbce`` (``beta``): ``negatives`` (K,) shared by the batch. See :mod:`.losses`.
    """
    h = model(inputs)
    keep = targets > 0
    E = model.item_table
    if loss == "bce":
        pos = (h * E[targets]).sum(-1)[keep]
        neg = (h * E[negatives]).sum(-1)[keep]
        return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
            F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
    h, y = h[keep], targets[keep]
    if loss == "ce":
        return L.chunked_ce(h, E, y, ce_chunk_items) if ce_chunk_items else L.full_ce(h, E, y)
    if loss == "sampled_softmax":
        return L.sampled_softmax(h, E, y, negatives, log_q)
    if loss == "gbce":
        return L.gbce(h, E, y, negatives, beta)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


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

    Data parallel (``accelerate launch``, :mod:`~..common.distributed`): every rank draws the same global
    batches (``batch_size`` windows, the same generator) and negatives, trains on its contiguous part of each,
    and the gradients are summed over ranks with each rank's loss weighted by its share of the batch's
    positions, so the step is the one-process step on the global batch (dropout masks are each rank's own).
    Rank 0 evaluates and broadcasts the validation metrics, and alone writes the resume state.
    """
    ranks = distributed.init(cfg.device)
    device = resolve_device(ranks.device_name(cfg.device))
    seed_everything(rank_seed(cfg.seed, ranks.rank))  # the global RNG is dropout's: each rank its own masks
    win = D.train_windows(data.sequences("train"), cfg.max_len, cfg.window_stride or None)
    # bce's negatives avoid the user's train items: per-user lists (CSR), a dense mask per batch only
    user_items = D.item_lists(data.sequences("train"), data.n_items) if cfg.loss == "bce" else None
    sampler = L.negative_sampler(cfg.negatives, data.n_items, data.sequences("train"), device) \
        if cfg.loss in ("sampled_softmax", "gbce") else None
    beta = L.gbce_beta(cfg.n_negatives, data.n_items, cfg.gbce_t) if cfg.loss == "gbce" else 1.0
    log.info("loss %s", loss_record(cfg, data.n_items))
    inputs, targets = win.inputs.to(device), win.targets.to(device)

    model = SASRec(cfg.model_config(data.n_items)).to(device)
    ranks.broadcast_tensors(list(model.parameters()) + list(model.buffers()))  # DDP's start: rank 0's init
    # Adam with β2 = 0.98 as in the paper (§IV-D); AdamW so weight_decay, when set, is decoupled
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order and every loss's negatives
    start_epoch, best_metric, best_epoch, bad_evals = 1, -1.0, 0, 0
    best_state: dict | None = None
    history: list[dict] = []

    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.exists():
        st = torch.load(resume_path, map_location=device, weights_only=True)
        free = _RESUME_FREE + unused_settings(cfg.loss)
        diff = {k: (st["config"].get(k), v) for k, v in dataclasses.asdict(cfg).items()
                if st["config"].get(k) != v and k not in free}
        if diff:
            log.warning("resume state %s was written with a different config %s; starting afresh", resume_path, diff)
        else:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            gen.set_state(st["generator"])
            rngs = st.get("rank_rng") or [st["rng"]]  # every rank's dropout stream (data parallel)
            set_rng_state(rngs[ranks.rank] if len(rngs) == ranks.world else st["rng"])
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
        if progress and ranks.is_main:
            from tqdm import tqdm
            it = tqdm(it, total=(n + cfg.batch_size - 1) // cfg.batch_size, desc=f"epoch {epoch}", leave=False)
        for idx in it:
            x, y = inputs[idx.to(device)], targets[idx.to(device)]
            neg = None
            if cfg.loss == "bce":
                neg = D.sample_train_negatives(y.cpu(), user_items.mask(win.users[idx]), gen).to(device)
            elif sampler is not None:
                neg = sampler.sample(cfg.n_negatives, gen).to(device)  # one draw shared by the batch
            if ranks.world > 1:  # DDP: this rank's part of the global batch (and of its per-position negatives)
                part = ranks.shard(len(idx))
                x, y, neg = x[part], y[part], (neg[part] if cfg.loss == "bce" else neg)
            loss = sequence_loss(model, x, y, cfg.loss, neg, log_q=sampler.log_q if sampler else None, beta=beta,
                                 ce_chunk_items=cfg.ce_chunk_items) if len(y) else None
            loss, batch_loss = ranks.global_mean(loss, int((y > 0).sum()))  # one process: (loss, float(loss))
            opt.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
            ranks.sum_grads(model.parameters())  # DDP's all-reduce (nothing in one process)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += batch_loss * len(idx)
            count += len(idx)
        row: dict[str, Any] = {"epoch": epoch, "train/loss": total / count, "charts/epoch_s": time.time() - t0}

        # ---- selection on validation (full ranking, seen masked) ----
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t1 = time.time()
            res = evaluate(model, data, "valid", batch_size=cfg.eval_batch_size, protocols=("full_masked",)) \
                if ranks.is_main else None  # data parallel: rank 0 evaluates, every rank selects on its numbers
            m = ranks.broadcast(res and res["metrics"]["full_masked"])
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
            more = {"rank_rng": ranks.gather(rng_state())} if ranks.world > 1 else {}  # collective: every rank
            if ranks.is_main:
                atomic.save_torch(resume_path, {**_state(model, opt, gen, epoch, best_state, best_metric, best_epoch,
                                                         bad_evals, history, cfg), **more})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return model, history

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
