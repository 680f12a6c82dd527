"""Which shown history items the ranker's score of an item rests on (DESIGN.md §4.4). Pure: no I/O.

Counterfactual leave-one-out ("representation erasure", Li, Monroe & Jurafsky 2016, arXiv:1612.08220;
for recommenders the counterfactual-history view of PRINCE, Ghazimatin et al., WSDM 2020, and ACCENT,
Tran et al., CIKM 2021). For a user sequence ``u`` and a target item ``i`` the contribution of the
history item ``j`` is

    c_j = s(u, i) − s(u ∖ j, i),        s(u, i) = h_uᵀ e_i  (SASRec, ``model.py``)

where ``u ∖ j`` is the user's sequence with ``j`` deleted: the items before it move one step closer
to the end (they take its position embedding), as if the user had never interacted with ``j``. A
positive ``c_j`` means the ranker scores ``i`` higher *because* ``j`` is in the history.

Candidates are the last ``n_shown`` items of each sequence: the ones the explainer's prompt lists
(``build_prompt`` shows the most recent ``max_history`` = 10 items, fewer when its token budget is
short; pass the count it kept as ``shown``).

Sequences are left-padded item ids, most recent last (``ranker/data.py``). The ranker reads the last
``max_len`` of them. Give one item more (``max_len + 1`` columns, e.g. :func:`loo_inputs`) and the
deleted item's slot is filled by the item that the ``max_len`` window had just cut off, exactly what
the ranker would see had ``j`` never happened; with only ``max_len`` columns the front gets padding.

NOTE: ties are not broken here; :func:`rank_contributors` orders equal contributions most recent first.

Example::

    attr = leave_one_out(ranker, loo_inputs(data.sequences("train"), ranker.cfg.max_len), slate[:, 0])
    attr.items[b], attr.contributions[b]      # oldest → most recent shown item, its score drop
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from .data import histories


class Attribution(NamedTuple):
    """Leave-one-out attribution of B (user, item) pairs over their C = ``n_shown`` shown items.

    Columns run oldest → most recent shown item (the prompt's order); short histories are padded at
    the front (item 0, ``valid`` False, contribution NaN).

    items:         (B, C) long    — shown history item ids (0 = no item in this slot)
    valid:         (B, C) bool    — the slot holds a real item (and, with ``shown``, the prompt lists it)
    contributions: (B, C) float32 — ``s(u, i) − s(u ∖ j, i)``; NaN where not ``valid``
    base:          (B,)   float32 — ``s(u, i)`` with the whole history
    removed:       (B, C) float32 — ``s(u ∖ j, i)``; NaN where not ``valid``
    """

    items: torch.Tensor
    valid: torch.Tensor
    contributions: torch.Tensor
    base: torch.Tensor
    removed: torch.Tensor


def loo_inputs(seqs: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """(B, max_len + 1) left-padded: each sequence's last ``max_len`` items and the one before them, so
    that a deletion refills the ranker's window from the user's real past (see the module note)."""
    return histories(seqs, max_len + 1)


def leave_one_out_variants(seqs: torch.Tensor, n_shown: int) -> torch.Tensor:
    """(B, n_shown, L): variant ``c`` deletes the item at position ``L − n_shown + c`` of each (B, L)
    left-padded sequence and shifts the items before it one step right, a 0 entering at the front.

    Column ``c`` is aligned with :class:`Attribution` (oldest shown → most recent). Positions before the
    sequence start are padding; their variant is the sequence itself shifted, and the caller masks it.
    """
    B, L = seqs.shape
    if not 1 <= n_shown <= L:
        raise ValueError(f"n_shown must be in 1..{L} (the sequence length); found {n_shown}")
    padded = torch.cat([seqs.new_zeros(B, 1), seqs], 1)  # padded[t] = seqs[t - 1]; padded[0] = 0
    t = torch.arange(L, device=seqs.device)
    p = torch.arange(L - n_shown, L, device=seqs.device)  # removed position per variant
    # new[t] = seqs[t − 1] = padded[t] for t ≤ p (shifted right), seqs[t] = padded[t + 1] for t > p
    idx = torch.where(t[None, :] <= p[:, None], t[None, :], t[None, :] + 1)  # (C, L)
    return padded[:, idx]  # (B, C, L)


@torch.no_grad()
def leave_one_out(model, seqs: torch.Tensor, targets: torch.Tensor, n_shown: int = 10, *,
                  shown: torch.Tensor | None = None, item_table: torch.Tensor | None = None,
                  max_batch: int = 4096) -> Attribution:
    """Score drop of each target when each of the last ``n_shown`` history items is deleted.

    ``model``: a :class:`~.model.SASRec` (anything with ``cfg.max_len``, ``user_state`` and
    ``item_table``). ``seqs``: (B, L) long left-padded histories, L ≥ ``n_shown``; the model reads
    the last ``max_len`` columns (give ``max_len + 1`` to refill a deletion, see :func:`loo_inputs`).
    ``targets``: (B,) item ids. ``shown``: optional (B,) number of history items each prompt actually
    listed (≤ ``n_shown``; ``Prompt.n_history``); older slots are marked not ``valid``.
    ``item_table``: a replacement store ``E`` (e.g. co-adapted). All ``B·(n_shown + 1)`` sequences go
    through the model, built and run in chunks of at most ``max(max_batch, n_shown + 1)`` rows (so memory
    stays bounded for any B); the model runs in eval mode on its own device and is returned to its
    previous mode.
    """
    if seqs.ndim != 2 or targets.shape != (seqs.shape[0],):
        raise ValueError(f"seqs must be (B, L) and targets (B,); found {tuple(seqs.shape)} and "
                         f"{tuple(targets.shape)}")
    max_len = int(model.cfg.max_len)
    device = next(model.parameters()).device
    seqs, targets = seqs.long().to(device), targets.long().to(device)
    B, L = seqs.shape
    C = n_shown
    if C > max_len:
        raise ValueError(f"n_shown ({C}) exceeds the ranker's window max_len ({max_len}): older items are not "
                         "inputs of the ranker, so deleting them attributes nothing")
    E = model.item_table if item_table is None else item_table.to(device)
    table = None if item_table is None else E
    per = max(1, max_batch // (C + 1))  # users per model call: (C + 1) rows each

    was_training = model.training
    model.eval()
    try:
        parts = []
        for a in range(0, B, per):
            x = seqs[a:a + per]
            # METHOD: the original and all its leave-one-out variants, scored in one model call
            rows = torch.cat([x[:, None], leave_one_out_variants(x, C)], 1)[..., -max_len:]  # (b, C+1, ≤max_len)
            h = model.user_state(rows.reshape(-1, rows.shape[-1]), table).view(len(x), C + 1, -1)
            parts.append((h * E[targets[a:a + per]][:, None]).sum(-1).float())  # s = h_uᵀ e_i (model.scores)
        s = torch.cat(parts) if parts else torch.zeros(0, C + 1, device=device)  # (B, C + 1): col 0 = full history
    finally:
        model.train(was_training)

    items = seqs[:, L - C:]
    valid = items > 0
    if shown is not None:
        shown = torch.as_tensor(shown, device=device).long().clamp(0, C)
        valid &= torch.arange(C, device=device)[None, :] >= (C - shown)[:, None]
    nan = torch.tensor(float("nan"), device=device)
    base, removed = s[:, 0], torch.where(valid, s[:, 1:], nan)
    return Attribution(items.masked_fill(~valid, 0).cpu(), valid.cpu(), (base[:, None] - removed).cpu(),
                       base.cpu(), removed.cpu())


def rank_contributors(attr: Attribution) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, ranked items), both (B, C): the column indices of :class:`Attribution` by decreasing
    contribution, and their item ids; ties go to the more recent item; invalid slots last (item 0)."""
    c = attr.contributions.masked_fill(~attr.valid, float("-inf")).flip(1)  # most recent first
    order = torch.sort(c, dim=1, descending=True, stable=True).indices
    order = attr.items.shape[1] - 1 - order  # back to oldest-first column indices
    return order, attr.items.gather(1, order)


def shown_attribution(model, histories: Sequence[np.ndarray], targets: Sequence[int],
                      shown: Sequence[Sequence[int]], item_table: torch.Tensor | None = None) -> Attribution:
    """:func:`leave_one_out` of B pairs over exactly the history items each prompt showed.

    ``histories``: each pair's full history (oldest first) that the prompt was built from; ``shown``: the
    items the prompt listed, which are the last ``len(shown[b])`` of ``histories[b]`` (checked: a prompt
    that showed anything else cannot be attributed this way). ``item_table``: the store the ranker's
    reasons are read from (the original ``E0`` during PPO, where the model's own table co-adapts).
    """
    if not len(histories) == len(targets) == len(shown):
        raise ValueError(f"one history, target and shown list per pair expected; found {len(histories)}, "
                         f"{len(targets)}, {len(shown)}")
    n = [len(s) for s in shown]
    for b, (h, s) in enumerate(zip(histories, shown)):
        tail = [int(i) for i in np.asarray(h)[len(h) - len(s):]] if len(s) else []
        if tail != [int(i) for i in s]:
            raise ValueError(f"pair {b}: the prompt showed {list(map(int, s))}, not the last {len(s)} history "
                             f"items {tail}")
    width = max(1, min(max(n, default=1), int(model.cfg.max_len)))
    seqs = loo_inputs([np.asarray(h, np.int64) for h in histories], int(model.cfg.max_len))
    return leave_one_out(model, seqs, torch.as_tensor(list(targets), dtype=torch.long), width,
                         shown=torch.tensor(n), item_table=item_table)
