"""Cost of one Shielded PPO step, phase by phase (issue 13; DESIGN.md §8), and TRL's GRPOTrainer beside it.

    python scripts/bench_ppo.py [--config experiments/recrl_default.yaml] [--steps 4] [--warmup 1] \
        [--threads 2] [--unshared] [--vs_trl] [--trl_steps 4] [--out experiments/bench/ppo.json] [-- --any_ppo_flag value]

Needs the smoke pipeline's checkpoints (ranker, basis, warm start: ``bash scripts/run_local_smoke.sh``).
Runs ``--warmup + --steps`` PPO iterations of the shielded trainer (``run_recrl_cli.build``, the same
objects as a real run, logging off, nothing written under checkpoints/ or logs/) and prints, per phase,
the median wall time over the timed steps: prompt building (bridge + embeddings), generation, the policy
(old log-prob) pass, the reference (warm start) pass — absent when ``kl_beta`` = 0 —, the reward
(simulator: q, CTR), the update's forward/backward passes, the optimizer step and the shield; then
rollouts per second = ``ppo_batch`` / step time. ``--unshared`` repeats the steps with one prompt pass per
row (``--no-share_prompts``: the loop before group-shared prompt encoding) for the speed-up at equal model,
lengths and draws. Flags after ``--`` go to the PPO config (e.g. ``-- --kl_beta 0``); the run loop's own
settings (learning-rate schedule, panel, drift checks, checkpoints: ``LOOP_FLAGS``) are refused, since the
benchmark has no run loop and they would do nothing.

``--vs_trl`` (needs ``pip install trl``; TRL is the seed's reference implementation) runs TRL's
``GRPOTrainer`` on the same base model with a fresh LoRA of the same rank, the same prompts as text
(no soft tokens: TRL cannot feed the bridge's embeddings, nor apply the shield after each step, which
is why the project's loop is hand-written), the same reward (q from the same simulator), group size,
generation length, temperature and learning rate, and prints its rollouts per second and mean reward
over ``--trl_steps`` steps next to ours. It needs no network (a local model folder). The rewards are not
comparable as a learning result: ours starts from the warm start with soft tokens, TRL from the base model
(the warm start's adapters were trained with the bridge, so a text prompt would be off their distribution).

Timings depend on what else runs on the machine: the JSON records the thread count and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

from shielded_recrl.common import atomic
from shielded_recrl.common.configs import to_dict
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.paths import experiments_dir, resolve_user_path
from shielded_recrl.common.seeding import torch_generator
from shielded_recrl.trainer.ppo import PHASES

PHASE_NAMES = {"prompt": "prompt (bridge + embeddings)", "generate": "generation", "policy_pass": "policy pass (old log-probs)",
               "reference_pass": "reference pass (warm start)", "reward": "reward (simulator: q, CTR)",
               "update_pass": "update forward + backward", "optimizer": "optimizer step", "shield": "shield"}


def parse(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/recrl_default.yaml", help="the PPO config (smoke by default)")
    ap.add_argument("--dataset", default="ml100k")
    ap.add_argument("--steps", type=int, default=4, help="timed PPO steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--unshared", action="store_true",
                    help="also run the same steps with --no-share_prompts (one prompt pass per row: the loop before "
                         "group-shared prompt encoding) and print the speed-up")
    ap.add_argument("--vs_trl", action="store_true", help="also run TRL's GRPOTrainer on the same task")
    ap.add_argument("--trl_steps", type=int, default=4, help="GRPOTrainer steps with --vs_trl")
    ap.add_argument("--out", default="", help="JSON output (default experiments/bench/ppo.json)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.trl_steps < 1:
        raise InputError("--steps/--warmup/--trl_steps", "steps ≥ 1, warmup ≥ 0, trl_steps ≥ 1",
                         f"{args.steps}, {args.warmup}, {args.trl_steps}")
    return args, extra


# run-loop settings: the benchmark times the trainer's steps (constant rates, no panel, no drift checks, nothing
# saved), so these would be accepted and do nothing
LOOP_FLAGS = ("--max_steps", "--warmup_steps", "--lr_decay", "--save_every", "--resume", "--panel_users", "--panel_every",
              "--panel_decoding", "--panel_samples", "--monitor_every", "--monitor_users", "--max_ndcg_drop",
              "--min_top10_overlap", "--drift_action", "--n_samples", "--rank_check_every")


def ppo_config(args: argparse.Namespace, extra: list[str]):
    from shielded_recrl.trainer import run_recrl_cli

    loop = sorted({a.split("=")[0] for a in extra} & set(LOOP_FLAGS))
    if loop:
        raise InputError("flags after --", "PPO settings of one step (the benchmark runs --warmup + --steps trainer "
                         "steps at constant rates, without the run loop's panel, drift checks or checkpoints)",
                         " ".join(loop), "Drop them, or time a real run with run_recrl_cli.py.")
    flags = ["--config", args.config, "--dataset", args.dataset, "--tag", "bench_ppo", "--panel_users", "0",
             "--monitor_every", "0", "--threads", str(args.threads)]
    if not any(f in extra for f in ("--projection_basis", "--no_projection", "--freeze_store")):
        flags += ["--projection_basis", f"checkpoints/basis_{args.dataset}.pt"]
    return run_recrl_cli.parse(flags + extra)


def bench_ours(cfg, steps: int, warmup: int) -> dict:
    from shielded_recrl.trainer import run_recrl_cli

    t0 = time.perf_counter()
    built = run_recrl_cli.build(cfg)
    load_s = time.perf_counter() - t0
    gen = torch_generator(cfg.seed)
    rows = []
    for k in range(warmup + steps):
        metrics, _ = built.trainer.step(gen)
        if k >= warmup:
            rows.append(metrics)
        print(f"  step {k + 1}{' (warm-up)' if k < warmup else ''}: {metrics['charts/step_s']:.1f}s", flush=True)
    phases = {p: statistics.median(r[f"time/{p}_s"] for r in rows) for p in PHASES}
    phases["shield"] = statistics.median(r["charts/shield_s"] for r in rows)
    step_s = statistics.median(r["charts/step_s"] for r in rows)
    return {"load_s": load_s, "step_s": step_s, "rollouts_per_s": cfg.ppo_batch / step_s, "phases_s": phases,
            "response_tokens": statistics.median(r["charts/response_len"] for r in rows),
            "reward": [r["env/reward"] for r in rows], "steps": steps, "warmup": warmup}


def text_prompt(explainer, example) -> str:
    """The example's prompt as the plain chat text the tokenizer would produce without soft tokens."""
    prompt = explainer.prompt(example)
    return explainer.tok.decode(prompt.ids, skip_special_tokens=False)


def bench_trl(cfg, steps: int) -> dict:
    """TRL's GRPOTrainer, same model/prompts (as text)/reward/group/lengths/lr; rollouts per second."""
    try:
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
    except ImportError as err:
        raise InputError("--vs_trl", "the trl package (pip install trl)", f"not importable: {err}") from None
    from shielded_recrl.explainer.loading import load_base
    from shielded_recrl.explainer.policy import Explainer, ItemCatalog, PromptSettings
    from shielded_recrl.explainer.prompts import item_kind, shown_history
    from shielded_recrl.explainer.checkpoint import read_info
    from shielded_recrl.trainer import run_recrl_cli

    built = run_recrl_cli.build(dataclasses.replace(cfg, tag="bench_trl"))
    warm = read_info(resolve_user_path(built.resolved["explainer_ckpt"]))
    base, tok, _ = load_base(warm["base_model"]["name"])  # the warm start's base model, without its adapters
    settings = PromptSettings(kind=item_kind(cfg.dataset), max_prompt_len=cfg.max_prompt_len,
                              max_history=built.explainer.settings.max_history, n_user_tokens=0, n_item_tokens=0)
    plain = Explainer(base, tok, ItemCatalog(built.data.items), settings)
    gen = torch_generator(cfg.seed)
    n_prompts = cfg.ppo_batch // cfg.group_size
    rows = []
    for _ in range(steps + 1):
        users, items, examples = built.trainer.sample_pairs(n_prompts, gen)
        for u, i, ex in zip(users.tolist(), items.tolist(), examples):
            n_hist = plain.prompt(ex).n_history
            rows.append({"prompt": text_prompt(plain, ex), "user_id": int(u), "item_id": int(i),
                         "shown": [int(j) for j in shown_history(ex.history, n_hist)]})
    sim = built.sim

    def reward_q(prompts, completions, user_id, item_id, shown, **_):
        _, qual = sim.click_prob(torch.tensor(user_id), torch.tensor(item_id), list(completions), list(shown))
        return [float(q) for q in qual.q]

    args = trl.GRPOConfig(output_dir=str(experiments_dir() / "bench" / "trl_tmp"), per_device_train_batch_size=cfg.ppo_batch,
                          gradient_checkpointing=False,  # as ours: activations kept
                          num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
                          temperature=cfg.temperature, top_p=cfg.top_p, learning_rate=cfg.lr, beta=cfg.kl_beta,
                          max_steps=steps + 1, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                          seed=cfg.seed, gradient_accumulation_steps=1, num_iterations=cfg.epochs)
    lora = LoraConfig(r=cfg.lora_rank or 16, lora_alpha=2 * (cfg.lora_rank or 16), lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    trainer = trl.GRPOTrainer(model=base, reward_funcs=reward_q, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, peft_config=lora)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {"trl": trl.__version__, "step_s": step_s, "rollouts_per_s": cfg.ppo_batch / step_s, "reward": rewards[1:],
            "steps": steps, "warmup": 1}


def main(argv=None) -> dict:
    args, extra = parse(argv)
    cfg = ppo_config(args, extra)
    print(f"[bench_ppo] torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.2f}; {cfg.ppo_batch} rollouts/step = {cfg.ppo_batch // cfg.group_size} prompts × "
          f"G {cfg.group_size}, ≤ {cfg.max_new_tokens} new tokens, kl_beta {cfg.kl_beta}", flush=True)
    runs = {"ours": cfg} | ({"ours_unshared": dataclasses.replace(cfg, share_prompts=False)} if args.unshared else {})
    out = {"config": to_dict(cfg), "threads": args.threads or torch.get_num_threads(), "loadavg_1m_end": None}
    for name, c in runs.items():
        print(f"[bench_ppo] {name}: share_prompts={c.share_prompts}", flush=True)
        out[name] = bench_ours(c, args.steps, args.warmup)
    print(f"\n{'phase (median s)':36s}" + "".join(f"{n:>15s}" for n in runs))
    for p in out["ours"]["phases_s"]:
        print(f"{PHASE_NAMES[p]:36s}" + "".join(f"{out[n]['phases_s'][p]:15.2f}" for n in runs))
    print(f"{'step':36s}" + "".join(f"{out[n]['step_s']:15.2f}" for n in runs))
    print(f"{'rollouts/s':36s}" + "".join(f"{out[n]['rollouts_per_s']:15.3f}" for n in runs))
    if args.unshared:
        out["speedup"] = out["ours"]["rollouts_per_s"] / out["ours_unshared"]["rollouts_per_s"]
        print(f"speed-up of group-shared prompt encoding: {out['speedup']:.2f}×")
    ours = out["ours"]
    if args.vs_trl:
        out["trl"] = bench_trl(cfg, args.trl_steps)
        print(f"rollouts/s (TRL GRPOTrainer {out['trl']['trl']}, text prompt, fresh LoRA): "
              f"{out['trl']['rollouts_per_s']:.3f}; mean reward (q) per step: "
              f"{[round(r, 3) for r in out['trl']['reward']]} vs ours {[round(r, 3) for r in ours['reward']]}")
    out["loadavg_1m_end"] = os.getloadavg()[0]
    path = args.out or str(experiments_dir() / "bench" / "ppo.json")
    atomic.write_json(path, out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    run_cli(main)
