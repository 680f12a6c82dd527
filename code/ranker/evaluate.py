"""Batched, vectorised ranking evaluation of SASRec (and of any scorer) on a leave-one-out split.

Protocols and the tie rule are documented in ``metrics.py``. The projection stage uses the per-user
arrays (``ranks``/``ndcg@10`` per protocol, ``topk_items``) for paired standard errors and top-10
overlap, and ``item_table`` to score with a modified item store without touching the model.

Memory (DESIGN.md §7): nothing users × items is held. Users are ranked ``batch_size`` at a time; the
seen/interacted items are per-user lists (:class:`~.data.ItemLists`) whose (B, N+1) mask is built per
batch, so a run holds O(batch_size · N + users · max_len + interactions). ``batch_size`` is an upper
bound: a batch's (B, N+1) float32 score matrix is also kept within ``SCORE_BATCH_BYTES`` (256 MiB), so
at a 0.7M-item catalogue B is ~90 users rather than 1,024 (:func:`rows_per_batch`; the temporaries of a
batch are a few such matrices). ``users=`` (0-based rows, e.g. :func:`sample_users`) evaluates a subset.

Example::

    res = evaluate(model, data, "test")
    res["metrics"]["full_masked"]["ndcg@10"]          # mean over users (float)
    res["per_user"]["full_masked"]["ndcg@10"]         # (U,) float64 tensor
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from . import metrics as M
from .data import EvalInputs, eval_inputs
from .data import histories as left_padded

PROTOCOLS = ("full_masked", "full_unmasked", "sampled100")

# scorer(histories (B, L) long, rows (B,) long user indices) -> scores (B, N+1), finite for items 1..N
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SCORE_BATCH_BYTES = 256 * 2**20  # the most one batch's (B, N+1) float32 scores may take


def rows_per_batch(batch_size: int, n_cols: int) -> int:
    """Users per batch: ``batch_size``, lowered so that B × ``n_cols`` float32 scores fit in
    ``SCORE_BATCH_BYTES`` (at least 1). Unchanged below ~65k items, so ML-100K and ML-25M batch as asked."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; found {batch_size}")
    return max(1, min(batch_size, SCORE_BATCH_BYTES // (4 * max(1, n_cols))))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """``model.eval()`` for the block, then the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_scorer(model, item_table: torch.Tensor | None = None) -> Scorer:
    device = _model_device(model)
    table = None if item_table is None else item_table.to(device)  # moved once, not per batch

    def score(hist: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return model.scores(model.user_state(hist.to(device), table), table)

    return score


def sample_users(n_users: int, n: int, seed: int) -> torch.Tensor | None:
    """A fixed, seeded sample of ``n`` user rows (0-based, sorted) of ``n_users``, or None (every user) when
    ``n <= 0`` or ``n >= n_users``. The draw of ``eval.explanations.pick_users``: the same ``n`` and
    ``seed`` pick the same users."""
    if n <= 0 or n >= n_users:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_users, generator=g)[:n].sort().values


def user_rows(n_users: int, users: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """The (n,) long user rows to evaluate: ``users`` (0-based rows, checked) or all ``n_users``."""
    if users is None:
        return torch.arange(n_users)
    rows = torch.as_tensor(users, dtype=torch.long).reshape(-1)
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n_users):
        raise ValueError(f"users= must be 0-based user rows in [0, {n_users}); found "
                         f"[{int(rows.min())}, {int(rows.max())}]")
    return rows


def _inputs(model_or_len, data, split: str) -> EvalInputs:
    max_len = model_or_len if isinstance(model_or_len, int) else model_or_len.cfg.max_len
    return eval_inputs(data, split, max_len)


@torch.no_grad()
def evaluate_scorer(scorer: Scorer, inputs: EvalInputs, *, batch_size: int = 1024,
                    protocols: Sequence[str] = PROTOCOLS, seed: int = 0, ks: Sequence[int] = (10, 20),
                    users: Sequence[int] | torch.Tensor | None = None) -> dict:
    """Rank each user's target under each protocol, ``batch_size`` users at a time. Returns ``{"metrics",
    "per_user", "ranks", "n_users", "users"}``.

    ``users``: 0-based user rows to evaluate (default: all U); per-user results follow its order, and
    ``users`` in the result is the (n,) rows evaluated. ``metrics[protocol]`` maps ``ndcg@k``/``hr@k`` to
    means; ``per_user[protocol]`` maps them to (n,) tensors; ``ranks[protocol]`` is a :class:`metrics.Ranks`
    of (n,) tensors (``greater``, ``ties``; ``.expected()`` is the 0-based rank under random tie-breaking).
    The sampled-100 negatives come from a ``torch.Generator`` seeded with ``seed``, one (B, N+1) draw per
    batch (same seed, batch size and users → same negatives; B is :func:`rows_per_batch`).

    Raises ``ValueError`` when the scorer returns a NaN or ±inf score for a real item (column 0,
    padding, is ignored): a diverged model would otherwise rank its targets first.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; choose from {PROTOCOLS}")
    gen = torch.Generator().manual_seed(seed)
    all_rows = user_rows(len(inputs.targets), users)
    batch_size = rows_per_batch(batch_size, inputs.seen.n_items + 1)
    ranks: dict[str, list[M.Ranks]] = {p: [] for p in protocols}
    for i in range(0, len(all_rows), batch_size):
        rows = all_rows[i:i + batch_size]
        scores = scorer(inputs.histories[rows], rows).float().cpu()
        M.check_finite(scores, row_ids=rows)  # rows named by user row, not by position in the batch
        tgt = inputs.targets[rows]
        if "full_masked" in ranks:
            ranks["full_masked"].append(M.target_ranks(scores, tgt, inputs.seen.mask(rows)))
        if "full_unmasked" in ranks:
            ranks["full_unmasked"].append(M.target_ranks(scores, tgt, None))
        if "sampled100" in ranks:
            ranks["sampled100"].append(M.sampled_ranks(scores, tgt, inputs.interacted.mask(rows), gen, 100))
    out = {"n_users": len(all_rows), "users": all_rows, "metrics": {}, "per_user": {}, "ranks": {}}
    for p, parts in ranks.items():
        r = M.Ranks(torch.cat([part.greater for part in parts]), torch.cat([part.ties for part in parts]))
        out["ranks"][p] = r
        out["metrics"][p] = M.summarise(r, tuple(ks))
        out["per_user"][p] = {f"{m}@{k}": f(r, k) for k in ks for m, f in (("ndcg", M.ndcg_at_k), ("hr", M.hr_at_k))}
    return out


def evaluate(model, data, split: str, *, item_table: torch.Tensor | None = None, batch_size: int = 1024,
             protocols: Sequence[str] = PROTOCOLS, seed: int = 0, ks: Sequence[int] = (10, 20),
             users: Sequence[int] | torch.Tensor | None = None) -> dict:
    """Evaluate a SASRec ``model`` on ``split`` (valid|test) of a ``Processed`` dataset; see
    :func:`evaluate_scorer` for the result and ``users``. ``item_table`` overrides the item store ``E``."""
    with eval_mode(model):
        return evaluate_scorer(model_scorer(model, item_table), _inputs(model, data, split),
                               batch_size=batch_size, protocols=protocols, seed=seed, ks=ks, users=users)


@torch.no_grad()
def score_split(model, inputs: EvalInputs, tables: Sequence[torch.Tensor | None] = (None,), *,
                users: Sequence[int] | torch.Tensor | None = None,
                batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """``(rows (B,), [scores (B, N+1) per table])`` for ``batch_size`` users of ``inputs`` at a time: each
    item store's float32 CPU scores of every item (column 0, padding, set to -inf; seen items not masked)
    from the user's input history, in eval mode. ``None`` in ``tables`` is the model's own store as it is
    at each batch. Memory: ``len(tables)`` × B × (N+1) floats, B = :func:`rows_per_batch`."""
    scorers = [model_scorer(model, t) for t in tables]
    all_rows = user_rows(len(inputs.targets), users)
    batch_size = rows_per_batch(batch_size, inputs.seen.n_items + 1)
    with eval_mode(model):
        for i in range(0, len(all_rows), batch_size):
            rows = all_rows[i:i + batch_size]
            hist = inputs.histories[rows]
            out = []
            for score in scorers:
                s = score(hist, rows).float().cpu()
                s[:, 0] = float("-inf")
                out.append(s)
            yield rows, out


def all_scores(model, data, split: str, *, item_table: torch.Tensor | None = None, batch_size: int = 1024,
               mask_seen: bool = False) -> torch.Tensor:
    """(U, N+1) float scores of every item for every user's input history of ``split`` (on CPU).

    Column 0 (padding) is set to -inf; with ``mask_seen`` the history's items are too. U × (N+1) floats:
    for tests and small catalogues only (the dense oracle of the streamed paths); the stages use
    :func:`score_split`, :func:`topk_items` or :func:`score_batches`.
    """
    inputs = _inputs(model, data, split)
    parts = []
    for rows, (s,) in score_split(model, inputs, (item_table,), batch_size=batch_size):
        parts.append(s.masked_fill(inputs.seen.mask(rows), float("-inf")) if mask_seen else s)
    return torch.cat(parts)


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
    batch_size = rows_per_batch(batch_size, model.cfg.n_items + 1)
    with eval_mode(model):
        for i in range(0, len(seqs), batch_size):
            hist = left_padded(seqs[i:i + batch_size], model.cfg.max_len).to(device)
            h = model.user_state(hist, table)
            yield i, h.float().cpu(), model.scores(h, table).float().cpu()


def topk_items(model, data, split: str, k: int = 10, *, item_table: torch.Tensor | None = None,
               batch_size: int = 1024, users: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """(n, k) item ids of each user's top-k, best first; seen items and padding excluded. Batch by batch:
    ``batch_size`` × (N+1) scores at a time. ``users``: 0-based user rows (default: all U)."""
    inputs = _inputs(model, data, split)
    parts = []
    for rows, (s,) in score_split(model, inputs, (item_table,), users=users, batch_size=batch_size):
        parts.append(s.masked_fill_(inputs.seen.mask(rows), float("-inf")).topk(k, dim=1).indices)
    return torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.long)


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
