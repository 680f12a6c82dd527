"""The Shielded PPO stage's config (defaults → ``experiments/recrl_default.yaml`` → flags)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RecRLConfig:
    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    ranker_ckpt: str = dataclasses.field(default="", metadata={"help": "default checkpoints/sasrec_<D>.pt"})
    explainer_ckpt: str = dataclasses.field(default="", metadata={"help": "warm start; default checkpoints/lora_init_<D>"})
    # the three modes (exactly one; DESIGN.md §1 table)
    projection_basis: str = dataclasses.field(default="", metadata={"help": "shielded: the basis file (run_basis.py)"})
    no_projection: bool = dataclasses.field(default=False, metadata={"help": "ablation: E co-adapts unprojected"})
    freeze_store: bool = dataclasses.field(default=False, metadata={"help": "baseline: E never changes"})
    store_lr: float = dataclasses.field(default=1e-3, metadata={"help": "AdamW learning rate of the shared store E"})
    trust_radius: float = dataclasses.field(default=-1.0, metadata={
        "help": "ρ of the per-row trust region; < 0: the basis's value (shielded) / unbounded (no_projection)"})
    # policy
    lora_rank: int = dataclasses.field(default=0, metadata={
        "help": "must equal the warm start's LoRA rank (checked; 0: take the warm start's)"})
    int8: bool = dataclasses.field(default=False, metadata={"help": "8-bit base (bitsandbytes, CUDA only; else fp32)"})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = dataclasses.field(default="auto", metadata={"help": "auto | fp32 | bf16"})
    max_seq_len_explainer: int = dataclasses.field(default=176, metadata={"help": "prompt + response tokens"})
    explanation_max_len: int = dataclasses.field(default=40, metadata={"help": "response token budget"})
    max_new_tokens: int = dataclasses.field(default=40, metadata={"help": "tokens sampled (≤ explanation_max_len)"})
    temperature: float = 1.0
    top_p: float = 1.0
    # PPO
    max_steps: int = dataclasses.field(default=2, metadata={"help": "PPO iterations"})
    ppo_batch: int = dataclasses.field(default=8, metadata={"help": "explanations per PPO iteration"})
    sim_batch: int = dataclasses.field(default=4, metadata={"help": "explanations generated/scored at a time"})
    epochs: int = dataclasses.field(default=2, metadata={"help": "PPO epochs per batch"})
    micro_batch_size: int = 2
    grad_accum: int = 2
    lr: float = dataclasses.field(default=1e-4, metadata={"help": "LoRA, bridge and value head"})
    kl_beta: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    grad_clip: float = 1.0
    # simulator (DESIGN.md §4.3)
    slate_size: int = 10
    sim_reward: str = dataclasses.field(default="expected", metadata={"choices": ["expected", "sampled"]})
    z_over: str = dataclasses.field(default="all", metadata={"choices": ["all", "slate"]})
    # drift guard (DESIGN.md: the shield is a dial, not a wall)
    monitor_every: int = dataclasses.field(default=1, metadata={"help": "steps between ranking checks (0: off)"})
    max_ndcg_drop: float = dataclasses.field(default=0.05, metadata={
        "help": "relative validation NDCG@10 drop that trips the guard (not for --no_projection)"})
    min_top10_overlap: float = dataclasses.field(default=0.8, metadata={"help": "mean top-10 overlap floor"})
    drift_action: str = dataclasses.field(default="rollback", metadata={
        "choices": ["rollback", "stop"], "help": "roll E back to the last good check, or stop the run"})
    # bookkeeping
    save_every: int = dataclasses.field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    resume: str = dataclasses.field(default="", metadata={"help": "'' | auto | a step-XXXXXX folder"})
    tag: str = "shielded"
    seed: int = 0
    threads: int = dataclasses.field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    n_samples: int = dataclasses.field(default=2, metadata={"help": "explanations logged per step"})

    def __post_init__(self):
        if self.explanation_max_len >= self.max_seq_len_explainer:
            raise ValueError("explanation_max_len must be below max_seq_len_explainer")

    @property
    def mode(self) -> str | None:
        modes = [m for m, on in (("shielded", bool(self.projection_basis)), ("no_projection", self.no_projection),
                                 ("frozen", self.freeze_store)) if on]
        return modes[0] if len(modes) == 1 else None
