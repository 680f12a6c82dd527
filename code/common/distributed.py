"""Data parallelism: one run over several processes (DDP semantics) under Hugging Face ``accelerate``.

    accelerate launch --multi_gpu --num_processes N code/trainer/run_recrl_cli.py ...   # N GPUs, NCCL
    accelerate launch --multi_gpu --num_processes 2 code/ranker/train_sasrec.py --device cpu ...  # CPU, gloo

``accelerate`` (its ``Accelerator``) starts the process group and gives each process its rank and device;
the stages do the data parallelism themselves with the collectives below, in the way DDP does it: every
rank holds the whole model, trains on its share of the batch, and the gradients are **summed over ranks**
before clipping and the optimizer step, so every rank takes the same step. The stages weight each rank's
loss by its share of the global batch (tokens, positions), so the summed gradient *is* the gradient of the
single-process loss on the whole batch (tests/test_distributed.py checks it). NOTE: DDP's module wrapper
is not used — the PPO forward runs through the bridge, the shared store and a forward hook, not one
``module(x)`` — which changes nothing about the maths: DDP averages gradients with the same all-reduce.

NOTE (CPU): ``accelerate launch --cpu --num_processes N`` starts *one* process unless MPI is installed (its
multi-CPU launcher is ``mpirun``). ``--multi_gpu`` is accelerate's torchrun launcher; with ``--device cpu``
(or no GPU) the ranks run on the CPU over gloo. ``python -m torch.distributed.run --nproc_per_node N`` works
the same way.

Refused: FSDP and DeepSpeed (ZeRO). ZeRO-3 and FSDP shard the parameters across ranks, so no rank holds
the store ``E`` whole and the shield, which projects and bounds ``E``'s rows after every step against
the full ``E0`` and basis ``Q``, cannot run; ZeRO-1/2 shard optimizer state only, but the trainers do not
use DeepSpeed's engine, so its settings would be ignored silently.

Without a launcher (``WORLD_SIZE`` unset or 1), :data:`SINGLE` stands in: every collective is the identity
and ``accelerate`` is not imported, so a plain run is exactly what it was before this module existed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Iterable, Mapping

from .errors import InputError

log = logging.getLogger("recrl")
# accelerate launch sets these for the parameter-sharding back ends (accelerate/commands/launch.py)
_SHARDING_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                 "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
REFUSED_WHY = ("this project's data parallelism is DDP only (every rank holds the whole model; gradients are "
               "summed over ranks). ZeRO-3 and FSDP shard parameters across ranks, so no rank sees the shared "
               "store E whole and the shield (projection off span(Q) and the per-row trust region against E0, "
               "after every optimizer step) cannot run; the trainers do not drive DeepSpeed's or FSDP's engine, "
               "so their other settings would be ignored")
FIX = "Launch with plain DDP instead: accelerate launch --multi_gpu --num_processes N <script> ..."


class RankMismatch(RuntimeError):
    """Tensors that must be bit-identical on every rank (the store E, the policy) are not."""


def world_size(env: Mapping[str, str] = os.environ) -> int:
    """The number of processes the launcher started (1 without one); reads the environment only."""
    return max(1, int(env.get("WORLD_SIZE", "1") or 1))


def check_launch(env: Mapping[str, str] = os.environ) -> None:
    """Refuse a launch that shards parameters or drives another engine (FSDP, DeepSpeed, Megatron-LM)."""
    for key, name in _SHARDING_ENV.items():
        if str(env.get(key, "")).lower() in ("1", "true", "yes"):
            stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
            found = f"an accelerate launch with {name}" + (f" (ZeRO stage {stage})" if stage else "") + f" ({key})"
            raise InputError("accelerate launch", f"plain DDP: {REFUSED_WHY}", found, FIX)


def checksum(tensors) -> str:
    """sha256 of a tensor's (or a list of tensors') bytes, dtypes and shapes included: equal iff bit-identical."""
    import torch

    h = hashlib.sha256()
    for t in [tensors] if isinstance(tensors, torch.Tensor) else tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Ranks:
    """This process's place in a data-parallel run and the collectives the stages need.

    ``rank`` 0 is the main process: it alone writes logs, metrics, TensorBoard events and checkpoints.
    With ``world == 1`` every method returns its input (no process group exists).
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device=None, accelerator=None):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device, self.accelerator = device, accelerator

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world={self.world}, device={self.device})"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return self.accelerator.state.backend if self.accelerator is not None else None

    def device_name(self, requested: str) -> str:
        """The device this rank runs on: ``requested`` without a launcher, else the launcher's (``cuda:<local
        rank>`` or ``cpu``)."""
        if self.world == 1:
            return requested
        return "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"

    # --- collectives (identity when world == 1) ------------------------------------------------------
    def _dist(self):
        import torch.distributed as dist

        return dist

    def _tensor(self, values, dtype=None):
        import torch

        return torch.as_tensor(values, dtype=dtype or torch.float64, device=self.device)

    def sum(self, x: float) -> float:
        """Σ over ranks of a number."""
        if self.world == 1:
            return x
        t = self._tensor([x])
        self._dist().all_reduce(t)
        return float(t[0])

    def sum_tensor(self, t):
        """Σ over ranks of a tensor (a new tensor; the input is left alone)."""
        if self.world == 1:
            return t
        out = t.detach().to(self.device, copy=True)  # NCCL reduces device tensors only
        self._dist().all_reduce(out)
        return out.to(t.device)

    def max(self, x: float) -> float:
        if self.world == 1:
            return x
        t = self._tensor([x])
        self._dist().all_reduce(t, op=self._dist().ReduceOp.MAX)
        return float(t[0])

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (so that all ranks take, or all skip, a step)."""
        if self.world == 1:
            return flag
        t = self._tensor([1.0 if flag else 0.0])
        self._dist().all_reduce(t, op=self._dist().ReduceOp.MIN)
        return bool(t[0] > 0)

    def sum_grads(self, params: Iterable) -> None:
        """Replace each parameter's gradient by its sum over ranks (DDP's all-reduce, without DDP's 1/N:
        the stages weight each rank's loss by its share of the global batch). A gradient that is None on
        some ranks counts as zeros there; one that is None on every rank stays None (the optimizer then
        skips the tensor, as it would in one process). One flat buffer per dtype."""
        if self.world == 1:
            return
        import torch

        params = [p for p in params]
        has = self._tensor([p.grad is not None for p in params], torch.float32)
        self._dist().all_reduce(has, op=self._dist().ReduceOp.MAX)
        used = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict = {}
        for p in used:
            by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            self._dist().all_reduce(flat)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n

    def global_mean(self, local_mean, n_local: int):
        """A loss that is the mean of this rank's ``n_local`` terms (None when it has none) → (what to
        back-propagate, the mean over every rank's terms as a float). The first is ``local_mean × n_local /
        n_global``: summed over ranks (:meth:`sum_grads`) its gradients are the global mean's. One process:
        ``(local_mean, float(local_mean))``."""
        if self.world == 1:
            return local_mean, float(local_mean.detach())
        t = self._tensor([float(n_local), float(local_mean.detach()) * n_local if n_local else 0.0])
        self._dist().all_reduce(t)
        n, total = float(t[0]), float(t[1])
        return (local_mean * (n_local / n) if n_local else None), total / max(n, 1.0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if self.world == 1:
            return obj
        box = [obj]
        self._dist().broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: Iterable) -> None:
        """Overwrite each tensor with rank 0's value in place (DDP does this to parameters and buffers at
        construction, so that every rank starts from the same weights)."""
        if self.world == 1:
            return
        import torch

        for t in tensors:
            if t.dtype == torch.bool:  # gloo does not broadcast bools
                data = t.detach().to(torch.uint8)
                self._dist().broadcast(data, src=0)
                t.data.copy_(data.bool())
            else:
                self._dist().broadcast(t.data, src=0)

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        self._dist().all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            self._dist().barrier()

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` rows (sizes differ by at most one; a part may be empty)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def reduce_metrics(self, metrics: dict, sums: Iterable[str] = (), maxes: Iterable[str] = ()) -> dict:
        """Numbers averaged over ranks (``sums``: summed, ``maxes``: the largest); other values are left as
        they are. Every rank must pass the same keys. The ranks' shares of a batch are equal, so the mean of
        per-rank means is the mean over the global batch."""
        if self.world == 1:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        if len(set(self.gather(tuple(keys)))) != 1:
            raise RuntimeError(f"rank {self.rank}: metric names differ across ranks; cannot reduce {keys}")
        vals = self._tensor([float(metrics[k]) for k in keys])
        total, top = vals.clone(), vals.clone()
        self._dist().all_reduce(total)
        self._dist().all_reduce(top, op=self._dist().ReduceOp.MAX)
        sums, maxes = set(sums), set(maxes)
        out = dict(metrics)
        for i, k in enumerate(keys):
            out[k] = float(total[i]) if k in sums else float(top[i]) if k in maxes else float(total[i]) / self.world
        return out

    def check_identical(self, tensors: Mapping[str, Any], where: str) -> None:
        """Fail loudly (on every rank) unless each named tensor is bit-identical on every rank. Every rank
        applies the same summed gradient and the same deterministic shield, so any difference is a bug
        (or non-deterministic hardware) that would make the ranks train different models."""
        if self.world == 1:
            return
        mine = {name: checksum(t) for name, t in tensors.items()}
        every = self.gather(mine)
        bad = [name for name in mine if len({e[name] for e in every}) > 1]
        if bad:
            detail = "; ".join(f"{name}: " + ", ".join(f"rank {r} {e[name]}" for r, e in enumerate(every))
                               for name in bad)
            raise RankMismatch(f"{where}: {', '.join(bad)} differ across the {self.world} ranks ({detail}). They "
                               "must be bit-identical: every rank takes the same averaged step and the same "
                               f"deterministic shield. Stopping rather than training {self.world} different models.")
        log.info("%s: %s bit-identical on all %d ranks", where, ", ".join(mine), self.world)


SINGLE = Ranks()
_CURRENT: Ranks | None = None


def init(device: str = "auto") -> Ranks:
    """This process's :class:`Ranks`, set up once per process: :data:`SINGLE` without a launcher; under one
    (``WORLD_SIZE > 1``) an ``accelerate.Accelerator`` starts the process group — NCCL on GPUs, gloo on the
    CPU (``device == "cpu"``, or ``auto`` on a machine without CUDA)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    check_launch()
    if world_size() == 1:
        _CURRENT = SINGLE
        return _CURRENT
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    acc = Accelerator(cpu=cpu)
    if acc.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise InputError("accelerate launch", f"plain DDP over CPUs or GPUs: {REFUSED_WHY}",
                         f"distributed type {acc.distributed_type}", FIX)
    if acc.mixed_precision != "no":
        log.warning("accelerate's --mixed_precision %s is ignored: the stage's --dtype sets the precision",
                    acc.mixed_precision)
    dev = torch.device("cpu") if acc.device.type == "cpu" else acc.device
    _CURRENT = Ranks(acc.process_index, acc.num_processes, acc.local_process_index, dev, acc)
    return _CURRENT


def current() -> Ranks:
    """The :class:`Ranks` :func:`init` set up (:data:`SINGLE` before that)."""
    return _CURRENT or SINGLE
