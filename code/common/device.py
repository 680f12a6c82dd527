"""Device and dtype are resolved once, here; modules take the device from their inputs."""

from __future__ import annotations


def resolve_device(name: str = "auto"):
    import torch

    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto|cpu|cuda[:N], got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device):
    """``auto`` → bf16 on GPUs that support it, fp32 otherwise (CPU included)."""
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in table:
        raise ValueError(f"dtype must be auto|bf16|fp16|fp32, got {name!r}")
    return table[name]


def prepare_runtime(*, seed: int, device: str = "auto", dtype: str = "auto", threads: int = 0):
    """The start of every model stage, in one order: torch threads (``threads > 0``), seeds, then the
    device and dtype. Returns ``(device, dtype)``."""
    import torch

    from .seeding import seed_everything

    if threads > 0:
        torch.set_num_threads(threads)
    seed_everything(seed)
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)
