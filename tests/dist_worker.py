"""One rank of tests/test_distributed.py's PPO check, started by ``accelerate launch`` (CPU, gloo).

    accelerate launch --multi_gpu --num_processes 2 tests/dist_worker.py --tiny_dir D --root R --out O

Every rank writes what it saw under ``O/rank<r>/`` for the test to compare; nothing here asserts:
1. ``update.pt``: for rloo (shielded store) and gae (value head, free store), one PPO update of a fixed batch
   — rank 0's rollout, broadcast, each rank updating on its half — next to the one-process update of the
   whole batch with the same global mini-batch (``grad_accum`` × 2);
2. ``steps.pt``: the store after 3 data-parallel PPO steps with the shield on, its checksum, the users each
   rank drew, and the error ``check_identical`` raises once one bit of rank 1's store is flipped;
3. ``run.json``: ``run_recrl_cli.run`` for 3 steps (a checkpoint at step 2), then — as if the run had died
   after logging step 3 but before its checkpoint — ``--resume auto`` from step 2; the files each rank
   created, renamed or deleted under the root (an audit hook), and both summaries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from shielded_recrl.common import atomic, distributed
from shielded_recrl.common.seeding import rank_seed
from shielded_recrl.projection.shield import Shield, ShieldConfig, leak_ratio
from shielded_recrl.trainer import ppo_math as P
from shielded_recrl.trainer.ppo import PPOSettings, PPOTrainer

from test_explainer_unit import make_explainer
from test_trainer_ppo import basis, length_reward, pair_sampler

WRITE_EVENTS = ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate")


def trainer(tiny_dir, mode: str, settings: PPOSettings, ranks=distributed.SINGLE, Q=None) -> PPOTrainer:
    x = make_explainer(tiny_dir, store_grad=mode != "frozen")
    shield = Shield(x.ranker.item_emb.weight, Q if mode == "shielded" else None,
                    ShieldConfig(mode=mode, trust_radius=None))
    return PPOTrainer(x, shield, settings, pair_sampler(), length_reward, ranks=ranks)


def rows(b, part: slice):
    """The rows ``part`` of a rollout (whole groups: the shard of a batch of B = ranks × k × G rows)."""
    return type(b)(*[v[part] for v in b])


def state(tr: PPOTrainer) -> dict:
    return {"policy": [p.detach().clone() for p in tr.policy_params], "store": tr.shield.param.detach().clone(),
            "value_head": [p.detach().clone() for p in tr.value_head.parameters()],
            "bridge": [p.detach().clone() for p in tr.x.bridge.parameters()]}


def one_update(args, ranks) -> dict:
    out = {}
    for advantage, mode, G in (("rloo", "shielded", 2), ("gae", "no_projection", 1)):
        s = PPOSettings(ppo_batch=8, sim_batch=8, group_size=G, advantage=advantage, epochs=2, micro_batch_size=2,
                        grad_accum=2, lr=1e-2, value_lr=1e-2, store_lr=5e-2, kl_beta=0.05, max_new_tokens=4)
        one = dataclasses.replace(s, grad_accum=4)  # one process, the same mini-batch: 2 × 4 = 2 × 2 × 2 ranks
        Q = basis()
        single = trainer(args.tiny_dir, mode, one, Q=Q)
        torch.manual_seed(0)
        b = ranks.broadcast(single.rollout(torch.Generator().manual_seed(0)) if ranks.is_main else None)
        with torch.no_grad():  # a critic that is not constant yet: its first layers' gradients are not all 0,
            # which Adam would turn into steps of rounding noise (an update of |g| ≈ eps is ill-conditioned)
            single.value_head.net[-1].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))
        # every trainer starts from rank 0's one-process trainer (peft draws LoRA A from the global RNG; gae:
        # its value head started at the batch's mean reward in that rollout)
        ranks.broadcast_tensors(single._all_params() + list(single.value_head.buffers()))
        ddp = trainer(args.tiny_dir, mode, s, ranks, Q=Q)
        with torch.no_grad():
            for p, q in zip(ddp._all_params() + list(ddp.value_head.buffers()),
                            single._all_params() + list(single.value_head.buffers()), strict=True):
                p.copy_(q)
        before = state(ddp)
        part = ranks.shard(len(b.examples))
        single_stats = single.update(b, torch.Generator().manual_seed(1))
        ddp_stats = ddp.update(rows(b, part), torch.Generator().manual_seed(rank_seed(1, ranks.rank)))
        out[advantage] = {"before": before, "single": state(single), "ddp": state(ddp),  # grad_norm: before clipping
                          "single_stats": single_stats, "ddp_stats": ddp_stats}
        if advantage == "gae":  # whitening over every rank's tokens = over the whole batch's
            args_ = (b.reward, b.old_logp, b.ref_logp, b.values, b.response_mask)
            whole, _, _ = P.advantages("gae", *args_, kl_beta=s.kl_beta)
            half, _, _ = P.advantages("gae", *(a[part] for a in args_), kl_beta=s.kl_beta, total=ranks.sum_tensor)
            out["gae_whitened"] = {"whole": whole[part], "ranks": half}
    return out


def several_steps(args, ranks) -> dict:
    s = PPOSettings(ppo_batch=8, sim_batch=4, group_size=2, epochs=1, micro_batch_size=2, grad_accum=1, lr=1e-3,
                    store_lr=5e-2, max_new_tokens=4)
    Q = basis()
    tr = trainer(args.tiny_dir, "shielded", s, ranks, Q=Q)
    E0 = tr.shield.param.detach().clone()
    g = torch.Generator().manual_seed(rank_seed(0, ranks.rank))
    users = []
    for _ in range(3):
        metrics, b = tr.step(g)
        users.append(b.users.tolist())
    E = tr.shield.param.detach().clone()
    ranks.check_identical({"store E": tr.shield.param}, "after 3 steps")
    with torch.no_grad():  # one bit of one entry of rank 1's store: the check must stop every rank
        if ranks.rank == 1:
            tr.shield.param[1, 0] = torch.nextafter(tr.shield.param[1, 0], torch.tensor(float("inf")))
    try:
        ranks.check_identical({"store E": tr.shield.param}, "after a flipped bit")
        caught = ""
    except distributed.RankMismatch as err:
        caught = str(err)
    return {"E": E, "E0": E0, "checksum": distributed.checksum(E), "leak": leak_ratio(E - E0, Q), "users": users,
            "metrics": metrics, "caught": caught}


def cli_runs(args, ranks) -> dict:
    from shielded_recrl.trainer import run_folder, run_recrl_cli

    root = Path(os.environ["RECRL_ROOT"]).resolve()
    writes: list[str] = []

    def hook(event, hargs):
        if event == "open":
            path, mode, flags = hargs
            writing = any(c in str(mode or "") for c in "wax+") or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        else:
            paths = list(hargs[:2]) if event in WRITE_EVENTS else []
        for p in paths:
            if isinstance(p, (str, os.PathLike)) and str(Path(os.fspath(p)).resolve()).startswith(str(root)):
                writes.append(f"{event} {Path(os.fspath(p)).resolve().relative_to(root)}")

    sys.addaudithook(hook)
    common = ["--dataset", "ml100k", "--ranker_ckpt", args.ranker, "--projection_basis", "checkpoints/basis_ml100k.pt",
              "--lora_rank", "4", "--kl_beta", "0.05", "--micro_batch_size", "2", "--grad_accum", "1",
              "--max_seq_len_explainer", "120", "--explanation_max_len", "16", "--max_new_tokens", "4",
              "--ppo_batch", "4", "--sim_batch", "2", "--group_size", "2", "--epochs", "1", "--device", "cpu",
              "--threads", "1", "--rank_check_every", "1", "--tag", "dp", "--config", "experiments/none.yaml"]
    first = run_recrl_cli.run(run_recrl_cli.parse(common + ["--max_steps", "3", "--save_every", "2"]),
                              reward_fn=length_reward)
    if ranks.is_main:  # the run died after logging step 3, before writing its checkpoint
        atomic.write_json(run_folder.run_dir("ml100k", "dp") / "latest", {"step": 2, "folder": "step-000002"})
    ranks.barrier()
    resumed = run_recrl_cli.run(run_recrl_cli.parse(common + ["--max_steps", "3", "--resume", "auto"]),
                                reward_fn=length_reward)
    return {"first": first, "resumed": resumed, "writes": writes}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny_dir", required=True)
    p.add_argument("--ranker", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    ranks = distributed.init("cpu")
    out = Path(args.out) / f"rank{ranks.rank}"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(one_update(args, ranks), out / "update.pt")
    torch.save(several_steps(args, ranks), out / "steps.pt")
    (out / "run.json").write_text(json.dumps(cli_runs(args, ranks), default=str))
    (out / "world.json").write_text(json.dumps({"rank": ranks.rank, "world": ranks.world, "backend": ranks.backend}))


if __name__ == "__main__":
    main()
