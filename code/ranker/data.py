"""Tensors for SASRec training and evaluation from leave-one-out sequences (no file I/O here).

Conventions (as in the authors' code, Kang & McAuley 2018): item ids 1..N, 0 = padding, histories are
*left*-padded so the most recent item is always at the last position, where the user state is read.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

SPLITS = ("valid", "test")


def histories(seqs: Sequence[np.ndarray], max_len: int) -> torch.LongTensor:
    """(U, max_len) left-padded: the last ``max_len`` items of each sequence, zeros in front."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for u, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[u, max_len - len(s):] = s
    return torch.from_numpy(out)


def item_mask(seqs: Sequence[np.ndarray], n_items: int) -> torch.BoolTensor:
    """(U, n_items+1) bool: True where the user's sequence contains the item."""
    mask = torch.zeros(len(seqs), n_items + 1, dtype=torch.bool)
    lengths = [len(s) for s in seqs]
    if sum(lengths):
        rows = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(lengths))
        cols = torch.from_numpy(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]))
        mask[rows, cols] = True
    return mask


class ItemLists(NamedTuple):
    """Per-user item sets in CSR form: user row u's items are ``indices[indptr[u]:indptr[u + 1]]``.

    O(U + interactions) where a (U, N+1) bool mask is O(U·N) (38 GB at MovieLens-25M); :meth:`mask` builds
    the dense mask of a batch of rows only.

    indptr:  (U+1,) long — row offsets into ``indices``
    indices: (nnz,) long — item ids 1..N
    n_items: N
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def mask(self, rows: torch.Tensor) -> torch.BoolTensor:
        """(B, N+1) bool for the user rows ``rows`` (B,): True where the user's list holds the item."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        out = torch.zeros(len(rows), self.n_items + 1, dtype=torch.bool)
        n = int(length.sum())
        if n:
            first = torch.repeat_interleave(start - (length.cumsum(0) - length), length)  # indices offset per row
            out[torch.repeat_interleave(torch.arange(len(rows)), length),
                self.indices[first + torch.arange(n)]] = True
        return out


def item_lists(seqs: Sequence[np.ndarray], n_items: int) -> ItemLists:
    """:class:`ItemLists` of each user's sequence (the sparse :func:`item_mask`: ``item_lists(s, n).mask(rows)
    == item_mask(s, n)[rows]``)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    indices = torch.from_numpy(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])) if len(seqs) \
        else torch.zeros(0, dtype=torch.long)
    return ItemLists(indptr, indices, n_items)


class EvalInputs(NamedTuple):
    """Everything needed to rank one split for every user (U users, N items), O(U·max_len + interactions).

    histories:  (U, max_len) long — left-padded input history (train for valid; train+valid for test)
    targets:    (U,) long        — the held-out item
    seen:       ItemLists        — items in the input history (masked in the ``full_masked`` protocol)
    interacted: ItemLists        — the user's whole sequence (never drawn as a sampled negative)
    """

    histories: torch.Tensor
    targets: torch.Tensor
    seen: ItemLists
    interacted: ItemLists


def eval_inputs(data, split: str, max_len: int) -> EvalInputs:
    """Inputs for ranking ``split`` (valid|test) of a ``Processed`` dataset."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    history = data.sequences("train" if split == "valid" else "valid")
    return EvalInputs(histories(history, max_len), torch.from_numpy(data.targets(split)),
                      item_lists(history, data.n_items), item_lists(data.sequences("test"), data.n_items))


class TrainWindows(NamedTuple):
    """Next-item training examples cut from the train sequences (W windows of length L).

    inputs:  (W, L) long — left-padded item ids
    targets: (W, L) long — the next item at every position (0 where there is none: no loss there)
    users:   (W,) long   — row index (user_id - 1) of each window, for negative sampling
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    users: torch.Tensor


def train_windows(seqs: Sequence[np.ndarray], max_len: int, stride: int | None = None) -> TrainWindows:
    """Cut each train sequence into windows of ``max_len`` (input, next-item) pairs, from the end.

    A sequence of n items gives n-1 pairs. The last window ends at the last pair; earlier windows step
    back by ``stride`` (default ``max_len``: non-overlapping, every pair used once) until the first pair
    is covered, so long histories are trained on entirely, not only their last ``max_len`` items.
    NOTE: the paper trains on the last ``max_len`` items of each user only; on ML-100K (mean 103 train
    items per user) that would discard more than half of the data.
    """
    stride = stride or max_len
    ins, tgs, us = [], [], []
    for u, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        n_pairs = len(s) - 1
        end = n_pairs
        while n_pairs > 0:
            start = max(0, end - max_len)
            x = np.zeros(max_len, np.int64)
            y = np.zeros(max_len, np.int64)
            x[max_len - (end - start):] = s[start:end]
            y[max_len - (end - start):] = s[start + 1:end + 1]
            ins.append(x)
            tgs.append(y)
            us.append(u)
            if start == 0:
                break
            end -= stride
    if not ins:
        raise ValueError("no training pairs: every train sequence has fewer than 2 items")
    return TrainWindows(torch.from_numpy(np.stack(ins)), torch.from_numpy(np.stack(tgs)), torch.tensor(us))


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches over ``n`` examples (one epoch), drawn from ``generator``."""
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def sample_train_negatives(targets: torch.Tensor, user_items: torch.Tensor, generator: torch.Generator,
                           max_tries: int = 20) -> torch.Tensor:
    """One negative per position (B, L) for the paper's BCE loss: uniform over items the user never had.

    ``user_items`` (B, N+1) bool marks each window's user's train items. Rejection sampling; positions
    without a target get 0. After ``max_tries`` a clash is left in place (only for users who had almost
    every item).
    """
    n_items = user_items.shape[1] - 1
    neg = torch.randint(1, n_items + 1, targets.shape, generator=generator)
    for _ in range(max_tries):
        clash = user_items.gather(1, neg)
        if not clash.any():
            break
        neg = torch.where(clash, torch.randint(1, n_items + 1, targets.shape, generator=generator), neg)
    return neg.masked_fill(targets == 0, 0)
