"""The Shielded PPO stage's settings, each declared once (defaults → ``experiments/recrl_*.yaml`` → flags).

:class:`PPOSettings` is what the PPO loop (:mod:`.ppo`) reads; :class:`RecRLConfig` is the stage's config:
it *inherits* every PPO setting and adds the run's inputs, the store mode, the simulator and the drift
guard. So every PPO setting is a YAML key and a ``--flag`` of ``run_recrl_cli.py`` by construction.
Importable without torch (tests and drivers parse configs without loading models).
"""

from __future__ import annotations

import dataclasses

F = dataclasses.field
KL_KINDS = ("k1", "k3")
ADVANTAGES = ("rloo", "grpo", "gae")  # ppo_math.ADVANTAGES
REWARDS = ("click", "q")
MODES = ("shielded", "no_projection", "frozen")
LR_DECAYS = ("constant", "linear")  # ppo_math.lr_scale
PANEL_DECODINGS = ("greedy", "sample")


@dataclasses.dataclass
class PPOSettings:
    """The PPO loop's settings (DESIGN.md §4.2)."""

    ppo_batch: int = F(default=8, metadata={
        "help": "explanations per PPO iteration: the global batch, over all processes (accelerate launch: each of "
                "the N ranks generates ppo_batch / N); a multiple of group_size × N"})
    sim_batch: int = F(default=4, metadata={
        "help": "explanations generated (and scored) at a time, rounded down to whole groups (at least one)"})
    group_size: int = F(default=4, metadata={"help": "samples per (user, item) prompt: the group of rloo/grpo"})
    advantage: str = F(default="rloo", metadata={
        "choices": list(ADVANTAGES), "help": "rloo: leave-one-out group baseline (Ahmadian et al. 2024); grpo: "
                                            "group-normalised (Shao et al. 2024); gae: value head + GAE"})
    reward: str = F(default="click", metadata={
        "choices": list(REWARDS), "help": "what PPO maximises: the simulator's click (expected or sampled, "
                                          "--sim_reward) or the explanation quality q alone; CTR is reported either way"})
    epochs: int = F(default=2, metadata={"help": "PPO epochs over each batch"})
    micro_batch_size: int = F(default=2, metadata={"help": "explanations per forward/backward (per rank)"})
    grad_accum: int = F(default=2, metadata={
        "help": "micro-batches per optimizer step, per rank: a step's mini-batch is micro_batch_size × grad_accum "
                "× the number of ranks"})
    lr: float = F(default=1e-4, metadata={"help": "AdamW learning rate of LoRA and bridge"})
    value_lr: float = F(default=1e-4, metadata={"help": "AdamW learning rate of the value head (gae only)"})
    store_lr: float = F(default=1e-3, metadata={"help": "AdamW learning rate of the shared store E"})
    weight_decay: float = F(default=0.0, metadata={"help": "AdamW weight decay of LoRA and bridge"})
    kl_beta: float = F(default=0.05, metadata={
        "help": "KL penalty weight against the warm start, in the reward's units (click probability or q); "
                "0 skips the reference pass except every panel_every steps, where it measures the KL (objective/kl; "
                "NaN on the other steps)"})
    kl_kind: str = F(default="k1", metadata={"choices": list(KL_KINDS),
                                             "help": "KL estimator (ppo_math.kl_penalty; Schulman 2020)"})
    # a response is one episode; no discount (Ziegler et al. 2019)
    gamma: float = F(default=1.0, metadata={"help": "GAE discount"})
    lam: float = F(default=0.95, metadata={"help": "GAE λ"})
    clip: float = F(default=0.2, metadata={"help": "PPO policy ratio clip ε"})
    value_clip: float = F(default=0.0, metadata={"help": "value-loss clip (Huang et al. 2022 #9); 0: off"})
    vf_coef: float = F(default=0.5, metadata={"help": "value-loss weight"})
    grad_clip: float = F(default=1.0, metadata={"help": "global gradient-norm clip"})
    max_new_tokens: int = F(default=40, metadata={"help": "tokens sampled per explanation (≤ explanation_max_len)"})
    temperature: float = F(default=1.0, metadata={"help": "sampling temperature (the policy's, for log-probs too)"})
    top_p: float = F(default=1.0, metadata={"help": "nucleus sampling mass"})
    value_hidden: int = F(default=256, metadata={"help": "hidden width of the value head"})
    share_prompts: bool = F(default=True, metadata={
        "help": "encode each group's prompt once, its KV cache shared by the group's G samples, in generation "
                "and in the policy, reference and update passes (rloo/grpo; update micro-batches of whole groups "
                "when micro_batch_size is a multiple of group_size); off: one prompt pass per row (benchmarks)"})

    def __post_init__(self):
        for name, allowed in (("kl_kind", KL_KINDS), ("advantage", ADVANTAGES), ("reward", REWARDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; found {getattr(self, name)!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be ≥ 1; found {self.group_size}")
        if self.advantage != "gae" and self.group_size < 2:
            raise ValueError(f"advantage {self.advantage!r} needs group_size ≥ 2 (a group baseline); found "
                             f"{self.group_size}. Use --advantage gae for one sample per prompt.")
        if self.ppo_batch % self.group_size:
            raise ValueError(f"ppo_batch ({self.ppo_batch}) must be a multiple of group_size ({self.group_size})")

    @property
    def prompts_per_chunk(self) -> int:
        """Prompts generated at a time: ``sim_batch`` explanations in whole groups, at least one group."""
        return max(1, self.sim_batch // self.group_size)


@dataclasses.dataclass
class RecRLConfig(PPOSettings):
    """The stage's config: every :class:`PPOSettings` field plus what the run reads, writes and watches."""

    dataset: str = F(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    ranker_ckpt: str = F(default="", metadata={"help": "default checkpoints/sasrec_<D>.pt"})
    explainer_ckpt: str = F(default="", metadata={"help": "warm start; default checkpoints/lora_init_<D>"})
    # the three modes (exactly one; DESIGN.md §1 table)
    projection_basis: str = F(default="", metadata={"help": "shielded: the basis file (run_basis.py)"})
    no_projection: bool = F(default=False, metadata={"help": "ablation: E co-adapts unprojected"})
    freeze_store: bool = F(default=False, metadata={"help": "baseline: E never changes"})
    trust_radius: float = F(default=-1.0, metadata={
        "help": "ρ of the per-row trust region; < 0: the basis's value (shielded) / unbounded (no_projection)"})
    # policy
    lora_rank: int = F(default=0, metadata={
        "help": "must equal the warm start's LoRA rank (checked; 0: take the warm start's)"})
    int8: bool = F(default=False, metadata={"help": "8-bit base (bitsandbytes, CUDA only; else fp32)"})
    device: str = F(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = F(default="auto", metadata={"help": "auto | fp32 | bf16"})
    max_seq_len_explainer: int = F(default=176, metadata={"help": "prompt + response tokens"})
    explanation_max_len: int = F(default=40, metadata={"help": "response token budget"})
    max_steps: int = F(default=2, metadata={"help": "PPO iterations"})
    # the learning-rate schedule over the run's iterations (every optimizer group: policy, value head, store)
    warmup_steps: int = F(default=0, metadata={
        "help": "PPO iterations over which every learning rate rises linearly to its value (iteration k < W "
                "uses (k + 1)/W of it; 0: none)"})
    lr_decay: str = F(default="constant", metadata={
        "choices": list(LR_DECAYS), "help": "after the warm-up: constant, or linear down to 1/(max_steps − W) of "
                                           "each rate at the last iteration (ppo_math.lr_scale)"})
    # simulator (DESIGN.md §4.3)
    slate_size: int = F(default=10, metadata={"help": "the ranker's top-k a user is shown"})
    sim_reward: str = F(default="expected", metadata={"choices": ["expected", "sampled"],
                                                      "help": "reward = click probability, or a sampled click"})
    z_over: str = F(default="all", metadata={"choices": ["all", "slate"],
                                             "help": "items whose score mean/std standardise the ranker score"})
    w_faithfulness: float = F(default=0.0, metadata={
        "help": "weight in q of faithfulness to the ranker (the graded leave-one-out score of the shown history "
                "items the text names, on the original store; docs/faithfulness.md); the other q weights are "
                "scaled by 1 − w (0: off)"})
    self_reference_penalty: float = F(default=0.0, metadata={
        "help": "subtracted from the PPO reward of every text that names the recommended item as its own reason "
                "(quality.self_reference; q already caps such a text at 0): training-time shaping only, the "
                "q, CTR and panel that are reported do not include it (0: off)"})
    # drift guard (DESIGN.md: the shield is a dial, not a wall)
    monitor_every: int = F(default=1, metadata={"help": "steps between ranking checks (0: off)"})
    monitor_users: int = F(default=10000, metadata={
        "help": "validation users of the ranking check: a fixed sample seeded with --seed (all users when "
                "fewer; 0: all). Each check scores them twice, batch by batch (DESIGN.md §7)"})
    max_ndcg_drop: float = F(default=0.05, metadata={
        "help": "relative validation NDCG@10 drop vs the original store E0 that trips the guard "
                "(not for --no_projection)"})
    min_top10_overlap: float = F(default=0.8, metadata={"help": "mean top-10 overlap floor vs E0"})
    drift_action: str = F(default="rollback", metadata={
        "choices": ["rollback", "stop"],
        "help": "rollback: the policy (LoRA, bridge, value head) and E return to the last good check, with "
                "their AdamW moments dropped; stop: end the run"})
    # the fixed validation panel (issue 13): the same pairs every time, paired against the warm start
    panel_users: int = F(default=0, metadata={
        "help": "users of a fixed, seeded panel (their top slate item) explained greedily every panel_every "
                "steps and compared, pair by pair, with the warm start (panel/* metrics); panel users are "
                "never sampled for training, and the best panel checkpoint gets a 'best' pointer (0: off)"})
    panel_every: int = F(default=5, metadata={"help": "steps between panel evaluations (with panel_users > 0)"})
    panel_decoding: str = F(default="greedy", metadata={
        "choices": list(PANEL_DECODINGS),
        "help": "greedy: one greedy text per panel pair; sample: panel_samples texts per pair at the run's "
                "temperature/top_p (evaluate_run.py's default decoding), the same seeded draws at every panel, "
                "each pair scored by their mean"})
    panel_samples: int = F(default=4, metadata={"help": "texts per panel pair with --panel_decoding sample"})
    # bookkeeping
    save_every: int = F(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    resume: str = F(default="", metadata={"help": "'' | auto | a step-XXXXXX folder"})
    tag: str = F(default="shielded", metadata={"help": "the run's name: checkpoints/recrl/<D>/<tag>/, logs/<D>/<tag>/"})
    seed: int = F(default=0, metadata={"help": "seeds users, sampling, the simulator's ζ_u and clicks"})
    threads: int = F(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    n_samples: int = F(default=2, metadata={"help": "explanations logged per step"})
    rank_check_every: int = F(default=10, metadata={
        "help": "data-parallel runs: steps between checks that the store E and the policy are bit-identical "
                "on every rank (a checksum gathered from each; also at the end; a difference stops the run)"})

    def __post_init__(self):
        super().__post_init__()
        if self.explanation_max_len >= self.max_seq_len_explainer:
            raise ValueError("explanation_max_len must be below max_seq_len_explainer")
        if self.rank_check_every < 1:
            raise ValueError(f"rank_check_every must be ≥ 1; found {self.rank_check_every}")
        if self.monitor_users < 0:
            raise ValueError(f"monitor_users must be ≥ 0 (0: all users); found {self.monitor_users}")
        if self.panel_decoding not in PANEL_DECODINGS:
            raise ValueError(f"panel_decoding must be one of {PANEL_DECODINGS}; found {self.panel_decoding!r}")
        if self.panel_samples < 1:
            raise ValueError(f"panel_samples must be ≥ 1; found {self.panel_samples}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {LR_DECAYS}; found {self.lr_decay!r}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps] = [0, {self.max_steps}]; found "
                             f"{self.warmup_steps}")
        if not self.self_reference_penalty >= 0.0:
            raise ValueError(f"self_reference_penalty must be ≥ 0; found {self.self_reference_penalty}")
        if not 0.0 <= self.w_faithfulness < 1.0:
            raise ValueError(f"w_faithfulness must be in [0, 1); found {self.w_faithfulness}")

    @property
    def mode(self) -> str | None:
        """shielded | no_projection | frozen, or None when not exactly one mode flag is set."""
        modes = [m for m, on in zip(MODES, (bool(self.projection_basis), self.no_projection, self.freeze_store)) if on]
        return modes[0] if len(modes) == 1 else None

    @property
    def max_prompt_len(self) -> int:
        """The prompt's token budget: what ``max_seq_len_explainer`` leaves after the response budget."""
        return self.max_seq_len_explainer - self.explanation_max_len


def ppo_settings(cfg: PPOSettings) -> PPOSettings:
    """The plain :class:`PPOSettings` part of a config (every field, by name)."""
    return PPOSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PPOSettings)})
