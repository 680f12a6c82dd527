"""The one seeding helper. Samplers and evaluation negatives take explicit generators from here."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA). Same seed → same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import torch
    except ImportError:  # the dataset stage does not need torch
        return
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """The seed of data-parallel rank ``rank`` (and any further keys, e.g. a step): ``seed`` itself for rank 0
    with no further keys, so a one-process run draws exactly what it drew before ranks existed; otherwise
    a NumPy ``SeedSequence`` hash of all keys, so ranks draw independent streams, reproducibly for a given
    number of ranks."""
    if rank == 0 and not more:
        return seed
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


def torch_generator(seed: int, device: str = "cpu"):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values, so a checkpoint stays ``weights_only``-loadable."""
    import torch

    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
