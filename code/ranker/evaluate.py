"""Batched, vectorised ranking evaluation of SASRec (and of any scorer) on a leave-one-out split.

Protocols and the tie rule are documented in ``metrics.py``. The projection stage uses the per-user
arrays (``ranks``/``ndcg@10`` per protocol, ``topk_items``) for paired standard errors and top-10
overlap, and ``item_table`` to score with a modified item store without touching the model.

Example::

    res = evaluate(model, data, "test")
    res["metrics"]["full_masked"]["ndcg@10"]          # mean over users (float)
    res["per_user"]["full_masked"]["ndcg@10"]         # (U,) float64 tensor
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from . import metrics as M
from .data import EvalInputs, eval_inputs
from .data import histories as left_padded

PROTOCOLS = ("full_masked", "full_unmasked", "sampled100")

# scorer(histories (B, L) long, rows (B,) long user indices) -> scores (B, N+1), finite for items 1..N
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_scorer(model, item_table: torch.Tensor | None = None) -> Scorer:
    device = _model_device(model)

    def score(hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        hist = hist.to(device)
        table = None if item_table is None else item_table.to(device)
        return model.scores(model.user_state(hist, table), table)

    return score


def _inputs(model_or_len, data, split: str) -> EvalInputs:
    max_len = model_or_len if isinstance(model_or_len, int) else model_or_len.cfg.max_len
    return eval_inputs(data, split, max_len)


@torch.no_grad()
def evaluate_scorer(scorer: Scorer, inputs: EvalInputs, *, batch_size: int = 1024,
                    protocols: Sequence[str] = PROTOCOLS, seed: int = 0, ks: Sequence[int] = (10, 20)) -> dict:
    """Rank every user's target under each protocol. Returns ``{"metrics", "per_user", "ranks", "n_users"}``.

    ``metrics[protocol]`` maps ``ndcg@k``/``hr@k`` to means; ``per_user[protocol]`` maps them to (U,)
    tensors; ``ranks[protocol]`` is a :class:`metrics.Ranks` of (U,) tensors (``greater``, ``ties``;
    ``.expected()`` is the 0-based rank under random tie-breaking). The sampled-100 negatives come from a
    ``torch.Generator`` seeded with ``seed`` (same seed and batch size → same negatives).

    Raises ``ValueError`` when the scorer returns a NaN or ±inf score for a real item (column 0,
    padding, is ignored): a diverged model would otherwise rank its targets first.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; choose from {PROTOCOLS}")
    gen = torch.Generator().manual_seed(seed)
    U = len(inputs.targets)
    ranks: dict[str, list[M.Ranks]] = {p: [] for p in protocols}
    for i in range(0, U, batch_size):
        rows = torch.arange(i, min(i + batch_size, U))
        scores = scorer(inputs.histories[rows], rows).float().cpu()
        M.check_finite(scores, first_row=i)  # rows numbered over all U users, not within the batch
        tgt = inputs.targets[rows]
        if "full_masked" in ranks:
            ranks["full_masked"].append(M.target_ranks(scores, tgt, inputs.seen[rows]))
        if "full_unmasked" in ranks:
            ranks["full_unmasked"].append(M.target_ranks(scores, tgt, None))
        if "sampled100" in ranks:
            ranks["sampled100"].append(M.sampled_ranks(scores, tgt, inputs.interacted[rows], gen, 100))
    out = {"n_users": U, "metrics": {}, "per_user": {}, "ranks": {}}
    for p, parts in ranks.items():
        r = M.Ranks(torch.cat([part.greater for part in parts]), torch.cat([part.ties for part in parts]))
        out["ranks"][p] = r
        out["metrics"][p] = M.summarise(r, tuple(ks))
        out["per_user"][p] = {f"{m}@{k}": f(r, k) for k in ks for m, f in (("ndcg", M.ndcg_at_k), ("hr", M.hr_at_k))}
    return out


def evaluate(model, data, split: str, *, item_table: torch.Tensor | None = None, batch_size: int = 1024,
             protocols: Sequence[str] = PROTOCOLS, seed: int = 0, ks: Sequence[int] = (10, 20)) -> dict:
    """Evaluate a SASRec ``model`` on ``split`` (valid|test) of a ``Processed`` dataset; see
    :func:`evaluate_scorer` for the result. ``item_table`` overrides the item store ``E``."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_scorer(model_scorer(model, item_table), _inputs(model, data, split),
                               batch_size=batch_size, protocols=protocols, seed=seed, ks=ks)
    finally:
        model.train(was_training)


@torch.no_grad()
def all_scores(model, data, split: str, *, item_table: torch.Tensor | None = None, batch_size: int = 1024,
               mask_seen: bool = False) -> torch.Tensor:
    """(U, N+1) float scores of every item for every user's input history of ``split`` (on CPU).

    Column 0 (padding) is set to -inf; with ``mask_seen`` the history's items are too.
    """
    inputs = _inputs(model, data, split)
    was_training = model.training
    model.eval()
    try:
        score = model_scorer(model, item_table)
        parts = []
        for i in range(0, len(inputs.targets), batch_size):
            rows = torch.arange(i, min(i + batch_size, len(inputs.targets)))
            s = score(inputs.histories[rows], rows).float().cpu()
            s[:, 0] = float("-inf")
            if mask_seen:
                s = s.masked_fill(inputs.seen[rows], float("-inf"))
            parts.append(s)
        return torch.cat(parts)
    finally:
        model.train(was_training)


@torch.no_grad()
def score_batches(model, seqs: Sequence, *, item_table: torch.Tensor | None = None,
                  batch_size: int = 1024) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, h (B, d), scores (B, N+1))`` for ``batch_size`` histories at a time, on CPU, float32: the
    user states and the unmasked scores of every item (column 0, padding, untouched) of ``seqs[start:start+B]``
    (each one's last ``max_len`` items). The rows :func:`all_scores` concatenates (the same arithmetic, on
    the model's device: ``seqs = data.sequences("train")`` gives ``all_scores(model, data, "valid")``
    batch by batch), without ever holding U × (N+1) numbers."""
    device = _model_device(model)
    table = None if item_table is None else item_table.to(device)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(seqs), batch_size):
            hist = left_padded(seqs[i:i + batch_size], model.cfg.max_len).to(device)
            h = model.user_state(hist, table)
            yield i, h.float().cpu(), model.scores(h, table).float().cpu()
    finally:
        model.train(was_training)


def topk_items(model, data, split: str, k: int = 10, *, item_table: torch.Tensor | None = None,
               batch_size: int = 1024) -> torch.Tensor:
    """(U, k) item ids of each user's top-k, best first; seen items and padding excluded."""
    return all_scores(model, data, split, item_table=item_table, batch_size=batch_size,
                      mask_seen=True).topk(k, dim=1).indices


def flat(result: dict, prefix: str = "") -> dict[str, float]:
    """``{"<prefix><protocol>/ndcg@10": value, ...}`` for logging."""
    return {f"{prefix}{p}/{m}": v for p, ms in result["metrics"].items() for m, v in ms.items()}


def table(rows: dict[str, dict], ks: Sequence[int] = (10, 20)) -> str:
    """A plain-text table: one row per (name, protocol), columns NDCG@k and HR@k."""
    cols = [f"{m}@{k}" for k in ks for m in ("ndcg", "hr")]
    lines = [f"{'model':<12} {'protocol':<14} " + " ".join(f"{c:>8}" for c in cols)]
    for name, res in rows.items():
        for p, ms in res["metrics"].items():
            lines.append(f"{name:<12} {p:<14} " + " ".join(f"{ms[c]:8.4f}" for c in cols))
    return "\n".join(lines)
