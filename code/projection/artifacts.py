"""The basis file ``checkpoints/basis_<D>.pt``: writing it, and loading it with its checks.

Contents (tensors and plain values; ``torch.load(weights_only=True)`` reads it)::

    format           "shielded_recrl.basis/1"
    Q                (d, r) float32, orthonormal columns: the protected ranking subspace
    singular_values  (d,) float32, descending (of the stacked block-normalised matrix)
    energy           τ, the cumulative energy share Q reaches
    rank             r
    d                the ranker's hidden size
    recipe           both | users | items
    trust_radius     ρ to use with it (the trainer's default; None = unbounded)
    ranker_sha256    sha256 of the ranker checkpoint it was computed from
    ranker_ckpt      that checkpoint's path (informative; the hash is what is checked)
    dataset, n_users, n_items, spectrum (rank at 0.9/0.95/0.99/0.999)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..common import atomic
from .shield import check_basis

FORMAT = "shielded_recrl.basis/1"


def manifest_path(basis_path: str | os.PathLike) -> Path:
    """``basis_<D>.pt`` → ``basis_<D>.manifest.json`` beside it (the ranker's checkpoint shares the folder,
    so a bare ``manifest.json`` would collide)."""
    p = Path(basis_path)
    return p.with_name(p.stem + ".manifest.json")


def save_basis(path: str | os.PathLike, basis: dict) -> Path:
    atomic.save_torch(path, {"format": FORMAT, **basis})
    return Path(path)


def load_basis(path: str | os.PathLike, *, d: int | None = None, ranker_sha256: str | None = None,
               map_location: str | torch.device = "cpu") -> dict:
    """Load a basis file; with ``d``/``ranker_sha256`` refuse one built for another ranker (InputError)."""
    basis = atomic.load_torch_checked(path, what="projection basis", fmt=FORMAT, map_location=map_location,
                                      fix="Build it: python code/projection/run_basis.py --dataset <D> --proj_dir .")
    if d is not None:
        check_basis(basis, d=d, ranker_sha256=ranker_sha256, source=str(path))
    return basis
