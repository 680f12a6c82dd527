"""Warm start: supervised fine-tuning of LoRA + bridge on reference explanations. No file I/O here.

Loss: negative log-likelihood of the reference's tokens (+ the end-of-turn token) given the prompt —
response tokens only; the prompt and the soft tokens carry no loss. Micro-batches with gradient
accumulation (the loss is averaged over the response tokens of the whole accumulated batch), AdamW,
linear warm-up then linear decay, gradient clipping, validation loss on held-out users every
``eval_every`` optimizer steps, early stopping after ``patience`` evaluations without improvement, and
the best trainable weights restored at the end (selection on validation, never on test).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .generation import response_nll
from .policy import Example, Explainer
from .prompts import Prompt, collate_responses

log = logging.getLogger("recrl")


class Encoded(NamedTuple):
    example: Example
    prompt: Prompt
    response: list[int]  # reference tokens + end-of-turn, at most explanation_max_len


def encode(explainer: Explainer, examples: Sequence[Example], max_response: int) -> list[Encoded]:
    tok = explainer.tok
    out = []
    for ex, prompt in zip(examples, explainer.prompts(examples)):
        resp = tok(ex.reference, add_special_tokens=False)["input_ids"][:max_response - 1] + [tok.eos_token_id]
        out.append(Encoded(ex, prompt, resp))
    return out


def batch_nll(explainer: Explainer, batch: Sequence[Encoded]) -> tuple[torch.Tensor, int, int]:
    """Mean response NLL of a micro-batch, its response-token count and its total real-token count."""
    prep = explainer.prepare([e.example for e in batch], [e.prompt for e in batch])
    ids, mask = collate_responses([e.response for e in batch], explainer.tok.pad_token_id)
    ids, mask = ids.to(explainer.device), mask.to(explainer.device)
    loss, n = response_nll(explainer.model, explainer.embed(prep), prep.prompts.mask, ids, mask)
    return loss, n, n + int(prep.prompts.mask.sum())


def _set_train(explainer: Explainer, mode: bool) -> None:
    explainer.model.train(mode)
    if explainer.bridge is not None:
        explainer.bridge.train(mode)


@torch.no_grad()
def validation_loss(explainer: Explainer, data: Sequence[Encoded], batch_size: int) -> float:
    """Token-weighted mean response NLL over ``data`` (eval mode: no dropout)."""
    _set_train(explainer, False)
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        loss, n, _ = batch_nll(explainer, data[i:i + batch_size])
        total += float(loss) * n
        count += n
    return total / max(count, 1)


@dataclasses.dataclass
class SFTSettings:
    """The warm start's optimisation settings, declared once: the stage's config (``LoraInitConfig`` in
    ``init_lora.py``) inherits them, so each is a flag and an ``experiments/explainer*.yaml`` key."""

    micro_batch_size: int = 4
    grad_accum: int = dataclasses.field(default=4, metadata={"help": "micro-batches per optimizer step"})
    lr: float = dataclasses.field(default=2e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = 0.0
    warmup_steps: int = dataclasses.field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    max_steps: int = dataclasses.field(default=0, metadata={"help": "optimizer steps (0: epochs)"})
    epochs: int = dataclasses.field(default=1, metadata={"help": "passes over the training data when max_steps is 0"})
    eval_every: int = dataclasses.field(default=50, metadata={"help": "optimizer steps between validation losses"})
    patience: int = dataclasses.field(default=3, metadata={"help": "evaluations without improvement before stopping"})
    grad_clip: float = dataclasses.field(default=1.0, metadata={"help": "max grad norm (0: off)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed (the stage seeds everything with it)"})


class SFTResult(NamedTuple):
    val_loss_before: float
    best_val_loss: float
    best_step: int
    steps: int
    train_tokens: int       # real (prompt + response) tokens seen in training
    train_seconds: float
    history: list[dict]


def train_sft(explainer: Explainer, train: Sequence[Encoded], val: Sequence[Encoded], s: SFTSettings,
              log_metrics: Callable[[dict, int], None] | None = None, progress: bool = True) -> SFTResult:
    params = explainer.trainable_parameters()
    if not params:
        raise ValueError("nothing to train: no LoRA adapters and no bridge")
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    per_epoch = max(1, len(train) // (s.micro_batch_size * s.grad_accum))  # full batches only
    total = s.max_steps if s.max_steps > 0 else per_epoch * s.epochs

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 0 at ``total``
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        return max(0.0, (total - step) / max(1, total - s.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    emit = log_metrics or (lambda m, step: None)
    gen = torch.Generator().manual_seed(s.seed)

    before = validation_loss(explainer, val, s.micro_batch_size)
    emit({"val/loss": before}, 0)
    log.info("validation loss before warm start: %.4f (%d examples)", before, len(val))
    best, best_step, bad = before, 0, 0
    best_state = [p.detach().clone() for p in params]
    history = [{"step": 0, "val_loss": before}]
    tokens, seconds, step = 0, 0.0, 0
    bar = tqdm(total=total, desc="lora_init", disable=not progress, dynamic_ncols=True, mininterval=5.0)
    stop = False
    while step < total and not stop:
        order = torch.randperm(len(train), generator=gen).tolist()
        chunk = s.micro_batch_size * s.grad_accum
        for c in range(max(1, len(order) // chunk)):  # the last incomplete batch of an epoch is dropped
            idx = order[c * chunk:(c + 1) * chunk]
            micro = [idx[i:i + s.micro_batch_size] for i in range(0, len(idx), s.micro_batch_size)]
            _set_train(explainer, True)
            t0 = time.perf_counter()
            n_resp = sum(len(train[j].response) for j in idx)
            loss_sum, step_tokens = 0.0, 0
            for m in micro:
                loss, n, n_all = batch_nll(explainer, [train[j] for j in m])
                (loss * n / n_resp).backward()  # mean over the accumulated batch's response tokens
                loss_sum += float(loss.detach()) * n
                step_tokens += n_all
            grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip > 0 else float("inf"))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            step += 1
            tokens += step_tokens
            seconds += dt
            emit({"train/loss": loss_sum / n_resp, "train/grad_norm": float(grad_norm),
                  "train/lr": sched.get_last_lr()[0], "charts/tokens_per_s": step_tokens / dt}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_resp:.3f}")
            if step % s.eval_every == 0 or step == total:
                v = validation_loss(explainer, val, s.micro_batch_size)
                emit({"val/loss": v}, step)
                history.append({"step": step, "val_loss": v})
                log.info("step %d: train loss %.4f, val loss %.4f", step, loss_sum / n_resp, v)
                if v < best:
                    best, best_step, bad = v, step, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= s.patience:
                        log.info("early stop at step %d: %d evaluations without improvement", step, bad)
                        stop = True
            if stop or step >= total:
                break
    bar.close()
    with torch.no_grad():  # the selected (best-on-validation) weights
        for p, b in zip(params, best_state):
            p.copy_(b)
    _set_train(explainer, False)
    return SFTResult(before, best, best_step, step, tokens, seconds, history)
