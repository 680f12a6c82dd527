"""Sentence embeddings of the catalogue's item texts, encoded when first needed (DESIGN.md §7, issue #15).

The quality scorer (:mod:`.quality`) compares each explanation with the explained item's catalogue text
and with the mean of the user's last ``history_window`` item texts. Encoding the whole catalogue up front
costs about an hour on CPU at Amazon Books' 0.71M items before the first PPO step, for the few thousand
items a run ever explains or sees in a history window. :class:`ItemTextEmbeddings` encodes only the items
a call needs, in one encoder call per call, and keeps every vector it has made: in memory, and — given a
cache file (:func:`cache_path`) — on disk, for every later run on the same processed data and encoder.

The vectors are the encoder's own float32 rows, stored and read back byte for byte, so a scorer gives the
same numbers whether an item was encoded now, earlier in the run, or by another run (with a deterministic
encoder: a batched transformer may round an item's vector differently in another batch, at ~1e-7).

Disk cache: ``data/_cache/item_text/<key>.sqlite`` (:func:`~shielded_recrl.common.paths.cache_dir`), one
row ``(item_id, float32 bytes)`` per encoded item. ``key`` hashes what the vectors depend on: the
dataset's id map (``Processed.id_map_sha256``: which item an id is), the encoder's ``identity`` (model and
version) and the item texts themselves (a re-preprocessed catalogue with a new text template and the same
ids is another key). NOTE: SQLite rather than a memmap with a "done" mask: each call's new vectors go in
one transaction (all or none after a crash), and several processes — DDP ranks, an evaluation beside a
training run — may read and add to one file at once under SQLite's locking, which a mask file written by
whoever renames last would lose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..common.paths import cache_dir


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


def cache_path(items: pd.DataFrame, encoder: Encoder, id_map_sha256: str, folder: Path | None = None
               ) -> Path | None:
    """The cache file of these item texts under this encoder, or None when the encoder has no
    ``identity`` (a test's fake: nothing says two fakes encode alike, so nothing is shared)."""
    identity = getattr(encoder, "identity", None)
    if identity is None:
        return None
    texts = hashlib.sha256("\x1f".join(_ordered(items)["text"].astype(str)).encode()).hexdigest()
    key = hashlib.sha256(f"{id_map_sha256}\x1e{identity}\x1e{texts}".encode()).hexdigest()[:20]
    return (folder if folder is not None else cache_dir() / "item_text") / f"{key}.sqlite"


def _ordered(items: pd.DataFrame) -> pd.DataFrame:
    ids = items["item_id"].to_numpy()
    return items if (np.diff(ids) > 0).all() else items.sort_values("item_id")


class VectorCache:
    """An SQLite file of ``item_id → float32 vector`` (see the module docstring); ``meta`` (what the
    vectors were computed from) is recorded in it once, so the file describes itself."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS vectors (item_id INTEGER PRIMARY KEY, vec BLOB NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])

    @contextlib.contextmanager
    def _connect(self):
        # one short connection per call: nothing stays open across a fork (data-loader workers) or a crash
        con = sqlite3.connect(self.path, timeout=120)  # wait for another process's transaction
        try:
            with con:  # one transaction: committed on success, rolled back on error
                yield con
        finally:
            con.close()

    def read(self, ids: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(the ids among ``ids`` the file holds, their (n, d) float32 vectors)."""
        found, vecs = [], []
        with self._connect() as con:
            for i in range(0, len(ids), 900):  # SQLite's bound-parameter limit is 999 in older builds
                chunk = [int(x) for x in ids[i:i + 900]]
                rows = con.execute(f"SELECT item_id, vec FROM vectors WHERE item_id IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchall()
                found += [r[0] for r in rows]
                vecs += [np.frombuffer(r[1], dtype=np.float32) for r in rows]
        if vecs and len({len(v) for v in vecs} | ({dim} if dim else set())) != 1:
            raise ValueError(f"{self.path}: vectors of another size than {dim or len(vecs[0])}; delete the file "
                             "(a cache, rebuilt on demand)")
        d = dim or (len(vecs[0]) if vecs else 0)
        return np.asarray(found, np.int64), (np.stack(vecs) if vecs else np.zeros((0, d), np.float32))

    def write(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        rows = [(int(i), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for i, v in zip(ids, vecs)]
        with self._connect() as con:
            con.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?)", rows)


class ItemTextEmbeddings:
    """``encoder``'s vectors of the item texts of ``items`` (``item_id``, ``text``), row = item id, made on
    first use. ``cache``: a :class:`VectorCache` file (:func:`cache_path`) to read before encoding and to
    add new vectors to; None keeps them in memory only.

    Memory: a (max id + 1, d) float32 table allocated on the first vector (zero pages, so only the rows
    written are resident: O(items used · d)), a bool "known" mask, and the texts the frame already holds.
    An id without a catalogue text (0, padding) is a zero vector, never encoded.
    """

    def __init__(self, items: pd.DataFrame, encoder: Encoder, cache: str | Path | None = None,
                 meta: dict | None = None):
        self.encoder = encoder
        ids = items["item_id"].to_numpy(np.int64)
        self._texts = items["text"].astype(str).reset_index(drop=True)
        self._row = np.full(int(ids.max()) + 1, -1, np.int64)  # item id → row of self._texts
        self._row[ids] = np.arange(len(ids))
        self.known = self._row < 0  # nothing to encode for an id without a text
        self.table: np.ndarray | None = None
        self.cache = VectorCache(Path(cache), meta or {}) if cache is not None else None
        self.n_encoded = 0  # items this object has encoded (not read from the cache)

    @property
    def dim(self) -> int:
        if self.table is None:
            self.ensure(np.flatnonzero(self._row >= 0)[:1])  # one item tells the encoder's width
        return self.table.shape[1]

    def vectors(self, ids) -> np.ndarray:
        """(…, d) float32 vectors of the item ids ``ids`` (any shape)."""
        ids = np.asarray(ids, np.int64)
        self.ensure(ids)
        if self.table is None:  # only ids without texts were asked for
            return np.zeros((*ids.shape, self.dim), np.float32)
        return self.table[ids]

    def ensure(self, ids=None) -> int:
        """Make the vectors of the items among ``ids`` (default: every item) not made yet — from the cache
        file, then in one encoder call for the rest. Returns how many were encoded."""
        ids = np.arange(len(self._row)) if ids is None else np.unique(np.asarray(ids, np.int64).reshape(-1))
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self._row)):
            raise IndexError(f"item ids must be in [0, {len(self._row) - 1}]; found [{ids.min()}, {ids.max()}]")
        need = ids[~self.known[ids]]
        if len(need) and self.cache is not None:
            found, vecs = self.cache.read(need, None if self.table is None else self.table.shape[1])
            self._store(found, vecs)
            need = need[~self.known[need]]
        if len(need):
            texts = self._texts.iloc[self._row[need]].tolist()
            vecs = np.asarray(self.encoder.encode(texts), dtype=np.float32).reshape(len(need), -1)
            self._store(need, vecs)
            self.n_encoded += len(need)
            if self.cache is not None:
                self.cache.write(need, vecs)
        return len(need)

    def _store(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not len(ids):
            return
        if self.table is None:
            self.table = np.zeros((len(self._row), vecs.shape[1]), np.float32)  # row 0 = padding
        elif vecs.shape[1] != self.table.shape[1]:
            raise ValueError(f"the encoder returned {vecs.shape[1]}-d vectors after {self.table.shape[1]}-d ones")
        self.table[ids] = vecs
        self.known[ids] = True
