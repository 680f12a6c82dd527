"""The ranker checkpoint: tensors and plain values only, loadable with ``torch.load(weights_only=True)``.

``checkpoints/sasrec_<D>.pt`` holds::

    format         "shielded_recrl.sasrec/1"
    model_config   SASRecConfig as a dict
    state_dict     the model's weights (item_emb.weight is the shared item store E)
    id_map_sha256  hash of the processed data's id map: a checkpoint only fits the data it was trained on
    ...            whatever the caller adds (metrics, train config, dataset name)

Its sha256 (``checkpoint_sha256``) is what the projection basis records and the trainer checks.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..common import atomic
from ..common.errors import InputError
from ..common.manifest import sha256_file
from .model import SASRec, SASRecConfig

FORMAT = "shielded_recrl.sasrec/1"


def save_ranker(path: str | os.PathLike, model: SASRec, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically; weights are moved to CPU so it loads anywhere."""
    ckpt = {"format": FORMAT, "model_config": dataclasses.asdict(model.cfg),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    for k, v in (extra or {}).items():
        if k in ckpt:
            raise ValueError(f"extra key {k!r} would overwrite the checkpoint's own field")
        ckpt[k] = v
    atomic.save_torch(path, ckpt)
    return Path(path)


def load_ranker(path: str | os.PathLike, expect_id_map: str | None = None,
                map_location: str | torch.device = "cpu") -> tuple[SASRec, dict]:
    """Load a ranker checkpoint (weights_only) → (model in eval mode, checkpoint dict).

    ``expect_id_map``: the ``id_map_sha256`` of the processed data it will be used with; a checkpoint
    trained on other data (different users/items or ids) is refused.
    """
    ckpt = atomic.load_torch_checked(path, what="SASRec checkpoint", fmt=FORMAT, map_location=map_location,
                                     fix="Train one: python code/ranker/train_sasrec.py --dataset <D>")
    if expect_id_map is not None and ckpt.get("id_map_sha256") != expect_id_map:
        raise InputError(path, f"a ranker trained on data with id map {expect_id_map}",
                         f"id map {ckpt.get('id_map_sha256')}",
                         "The processed data changed since training; re-train the ranker on it "
                         "(python code/ranker/train_sasrec.py --dataset <D>).")
    model = SASRec(SASRecConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location).eval()
    return model, ckpt


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of the checkpoint file (what the projection basis records as its ranker)."""
    return sha256_file(path)
