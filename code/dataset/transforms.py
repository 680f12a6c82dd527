"""Pure transforms from raw interactions to leave-one-out splits (DESIGN.md §3). No I/O here.

Input frames use raw ids: ``user_raw``, ``item_raw``, ``ts`` (sortable; ties keep file order), plus
optional columns carried through (``rating``, ``review``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


class EmptyAfterFilter(ValueError):
    pass


def iterative_kcore(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions until none is left (a fixed point)."""
    if k <= 1:
        return df
    while True:
        ucount = df["user_raw"].map(df["user_raw"].value_counts())
        icount = df["item_raw"].map(df["item_raw"].value_counts())
        keep = (ucount >= k) & (icount >= k)
        if keep.all():
            return df
        df = df[keep]
        if df.empty:
            return df


def chronological(df: pd.DataFrame) -> pd.DataFrame:
    """Per-user chronological order. Ties in ``ts`` keep the order of the raw file (stable sort)."""
    df = df.assign(_order=np.arange(len(df)))
    return df.sort_values(["user_raw", "ts", "_order"], kind="stable").drop(columns="_order")


def remap_ids(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """Contiguous ids from 1 (0 is padding). Users in order of first appearance after sorting by raw id;
    items by raw id, so the map does not depend on row order."""
    users = pd.Index(np.sort(df["user_raw"].unique()))
    items = pd.Index(np.sort(df["item_raw"].unique()))
    df = df.assign(user_id=users.get_indexer(df["user_raw"]) + 1, item_id=items.get_indexer(df["item_raw"]) + 1)
    return df, users, items


def leave_one_out(df: pd.DataFrame) -> pd.DataFrame:
    """Per user (rows already chronological): last → ``test``, second-last → ``valid``, rest → ``train``.
    Adds ``pos`` (0-based position in the user's sequence)."""
    pos = df.groupby("user_id").cumcount()
    n = df["user_id"].map(df["user_id"].value_counts())
    split = np.where(pos == n - 1, "test", np.where(pos == n - 2, "valid", "train"))
    return df.assign(pos=pos.astype("int32"), split=split)


def id_map_sha256(users: pd.Index, items: pd.Index) -> str:
    """Fingerprint of the id maps: a model trained on one processed copy refuses another."""
    h = hashlib.sha256()
    h.update(("\x1f".join(map(str, users))).encode())
    h.update(b"\x1e")
    h.update(("\x1f".join(map(str, items))).encode())
    return h.hexdigest()
