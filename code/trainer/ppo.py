"""Shielded PPO for the explainer: group rollouts → advantages → clipped PPO epochs → shield.

Importable, no file I/O (the stage script ``run_recrl_cli.py`` does loading, logging and checkpoints).

One iteration (``PPOTrainer.step``), DESIGN.md §4.2:

1. **Rollout** — ``ppo_batch / group_size`` (user, slate item) prompts, each explained ``group_size``
   times by the current policy (``generation.generate``; the prompt and the bridge's soft tokens are built
   once per prompt and the batch expanded), ``sim_batch`` explanations at a time; the reward function
   (the user simulator's click or q, or a test reward) scores each explanation.
2. **Old / reference log-probs and values** — one no-grad pass of the current policy gives the old
   log-probs and the value head's values (generation does not score its own samples: this pass is the
   one place they are scored, so the update's first-epoch ratio is exactly 1); a second pass with the
   *warm-start* weights swapped in gives the reference log-probs, skipped when ``kl_beta = 0`` except on
   the steps asked to measure the KL (``step(..., measure_kl=True)``: a diagnostic, not in the reward). NOTE:
   the reference policy is the warm start itself (initial LoRA + bridge + store ``E0``). Instead of a
   second model in memory we keep a copy of the initial *trainable* tensors only (a few MB) and swap them
   in for one forward (:meth:`PPOTrainer.reference_weights`).
3. **Advantages** (``advantage``):
   - ``rloo`` / ``grpo`` (default ``rloo``): the sequence reward minus ``kl_beta`` times the sequence's
     KL to the warm start, baselined within its group — leave-one-out mean (Ahmadian et al. 2024,
     arXiv:2402.14740) or group mean/std (Shao et al. 2024, arXiv:2402.03300) — and broadcast over the
     response tokens. Why groups (measured, DESIGN.md §4.2): the click reward's variance across a batch
     is mostly the user and the item, which every sample of one prompt shares, so it cancels.
   - ``gae``: ``r_t = −kl_beta·KL_t`` on every token plus the reward at the last one (Ziegler et al. 2019,
     arXiv:1909.08593 §2.2), GAE (Schulman et al. 2016, arXiv:1506.02438) on a value head whose output
     starts at the first batch's mean reward (a zero start with rewards ≈ 0.9 makes the first
     advantages a function of response length), and whitening (Huang et al. 2022 #7).
4. **PPO epochs** — ``epochs`` passes over the batch in shuffled mini-batches of
   ``micro_batch_size × grad_accum``; clipped surrogate (Schulman et al. 2017, arXiv:1707.06347 eq. 7),
   the value loss under ``gae`` only (clipped when ``value_clip > 0``); global gradient-norm clipping
   (Huang et al. 2022 #11); AdamW.
5. **Shield** — after every optimizer step, ``Shield.after_step`` projects the store's update off the
   ranking subspace and applies the per-row trust region (DESIGN.md §1); ``frozen`` restores it bit for
   bit, ``no_projection`` lets it move.

The value head is a *separate* 2-layer MLP on the policy's final hidden state (after the last norm),
read through a forward hook during the same forward that computes the log-probs (no second pass).
NOTE: its input is detached, so the value loss trains only the head and never the LoRA/bridge/store
(TRL's shared-trunk value head lets it; separating them keeps the store's update driven by the policy
objective alone, which is what the shield is about). Dropout is off throughout (``model.eval()``), so the
old and new log-probs agree exactly at the first epoch (TRL does the same for PPO).

A non-finite loss or gradient norm skips that optimizer step with a warning instead of corrupting the
weights.

**Data parallel** (``ranks``, :mod:`~..common.distributed`; ``accelerate launch``): ``ppo_batch`` is the
global batch. Each rank generates and scores ``ppo_batch / N`` explanations (whole groups) from its own
seeded generator and computes its group advantages locally (``gae``: the whitening statistics and the
value head's start are global). Every optimizer step's mini-batch is ``micro_batch_size × grad_accum``
rows *per rank*; each rank weights its token losses by the global mini-batch's token count and the
gradients are summed over ranks before clipping, so every rank takes the step one process would take on
the union of the ranks' mini-batches, and the shield after it keeps ``E`` bit-identical on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from ..common.distributed import SINGLE, Ranks
from ..explainer.generation import expand_groups, generate, sequence_logprobs
from ..explainer.policy import Explainer
from ..explainer.prompts import shown_history
from ..projection.shield import Shield
from . import ppo_math as P
from .config import PPOSettings

log = logging.getLogger("recrl")
# the phases of one PPO step whose wall time step() reports as time/<phase>_s (the shield: charts/shield_s)
PHASES = ("prompt", "generate", "policy_pass", "reference_pass", "reward", "update_pass", "optimizer")

# (user ids (B,), item ids (B,), texts, response token ids per text, the history items each prompt showed)
#   → (reward (B,), click probability (B,))
RewardFn = Callable[[torch.Tensor, torch.Tensor, Sequence[str], list, list], tuple[torch.Tensor, torch.Tensor]]


class ValueHead(nn.Module):
    """V(s_t) from the policy's final hidden state: LayerNorm → Linear → GELU → Linear(1)."""

    def __init__(self, d_model: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))  # checkpointed with the weights

    @torch.no_grad()
    def start_at(self, value: float) -> None:
        """Make the (still constant) head output ``value``: its last layer's weights are zero, so the output
        is the bias. Called once, with the first batch's mean reward."""
        self.net[-1].bias.fill_(value)
        self.started.fill_(True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float()).squeeze(-1)


def final_norm(model) -> nn.Module:
    """The module whose output is the last hidden state (Llama-family ``model.norm``), under peft or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    norm = getattr(inner, "norm", None)
    if norm is None:
        raise ValueError(f"cannot find the final norm of {type(base).__name__} for the value head")
    return norm


class Rollout(NamedTuple):
    """One PPO rollout: B = ppo_batch explanations, ``group_size`` consecutive rows per prompt
    (T = longest response). The generation output it is built from is ``generation.Generated``.

    examples, prompts: B (user, item, history) and their built prompts (re-collated per micro-batch)
    users, items:      (B,) long
    response_ids:      (B, T) long; response_mask (B, T) bool
    old_logp, ref_logp, values, advantages, returns, kl: (B, T) float, 0 on padding
    reward, ctr:       (B,) simulator reward and click probability
    texts:             B strings
    """

    examples: list
    prompts: list
    users: torch.Tensor
    items: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    reward: torch.Tensor
    ctr: torch.Tensor
    texts: list


def _pad_cat(xs: list[torch.Tensor], value) -> torch.Tensor:
    T = max(x.shape[1] for x in xs)
    return torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value) for x in xs])


class PPOTrainer:
    """PPO on an :class:`Explainer` whose ranker's store ``E`` is guarded by ``shield``.

    ``sample_pairs(n, generator) → (users (n,), items (n,), examples)`` picks who is shown what;
    ``reward_fn`` scores the texts. The optimizer has three groups: policy (LoRA + bridge), value head,
    store (``store_lr``, no weight decay; absent in frozen mode). ``ranks``: the data-parallel group
    (default: one process); every rank starts from rank 0's trainable tensors.
    """

    def __init__(self, explainer: Explainer, shield: Shield | None, settings: PPOSettings,
                 sample_pairs: Callable, reward_fn: RewardFn, value_head: ValueHead | None = None,
                 ranks: Ranks = SINGLE):
        if settings.ppo_batch % (settings.group_size * ranks.world):
            raise ValueError(f"ppo_batch ({settings.ppo_batch}) must be a multiple of group_size × ranks "
                             f"({settings.group_size} × {ranks.world}): each rank takes whole groups")
        self.x, self.shield, self.s, self.ranks = explainer, shield, settings, ranks
        self.sample_pairs, self.reward_fn = sample_pairs, reward_fn
        model = explainer.model
        self.value_head = value_head or ValueHead(model.config.hidden_size, settings.value_hidden)
        self.value_head.to(explainer.device)
        self.policy_params = explainer.trainable_parameters()
        self.store = shield.param if shield is not None else None
        store_trains = shield is not None and shield.trains_store  # METHOD: the shield's mode decides
        explainer.set_store_grad(store_trains)  # frozen: E is detached in the bridge, no gradient at all
        groups = [{"params": self.policy_params, "lr": settings.lr, "weight_decay": settings.weight_decay},
                  {"params": list(self.value_head.parameters()), "lr": settings.value_lr, "weight_decay": 0.0}]
        if store_trains:
            groups.append({"params": [self.store], "lr": settings.store_lr, "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups)
        self.base_lrs = [g["lr"] for g in groups]  # what set_lr_scale scales
        # DDP's start: rank 0's weights everywhere (the value head's random init differs per rank)
        ranks.broadcast_tensors(self._all_params() + list(self.value_head.buffers()))
        # the warm-start (reference) policy's trainable tensors, swapped in for the reference pass
        self.ref_state = [p.detach().clone() for p in self._ref_params()]
        self._hidden: torch.Tensor | None = None
        final_norm(model).register_forward_hook(self._capture)
        model.eval()  # NOTE: no dropout, so rollout and update log-probs are the same function
        self.skipped_steps = 0
        self.shield_seconds = 0.0  # time spent in the shield (its overhead)
        self.phase_seconds: dict[str, float] = {}  # this step's wall time per phase (PHASES), reset by step()

    # --- plumbing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _timed(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + time.perf_counter() - t

    def set_lr_scale(self, factor: float) -> None:
        """Every optimizer group's learning rate = its configured rate × ``factor`` (the schedule's,
        :func:`~.ppo_math.lr_scale`; the run sets it before each iteration, so a resumed run recomputes it)."""
        for g, lr in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = lr * factor

    def _ref_params(self) -> list[torch.Tensor]:
        return self.policy_params + ([self.store] if self.store is not None else [])

    def _capture(self, module, inputs, output):
        self._hidden = output[0] if isinstance(output, tuple) else output

    @contextlib.contextmanager
    def reference_weights(self):
        """Temporarily load the warm-start LoRA/bridge/store values (no grad)."""
        params = self._ref_params()
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, r in zip(params, self.ref_state):
                p.copy_(r)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    @property
    def shares_prompts(self) -> bool:
        """Whether the passes encode each group's prompt once (:func:`~..explainer.generation.prompt_cache`):
        with G > 1 and a group advantage (no critic, which would read every row's prompt states)."""
        return self.s.share_prompts and self.s.group_size > 1 and self.s.advantage != "gae"

    def forward(self, examples, prompts, ids, mask, group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs (B, T), values (B, T)) of the given responses under the current policy. ``group_size`` G
        > 1: the rows are whole groups of G copies of a prompt, each prompt encoded once (values are then 0:
        only group advantages share prompts, and they need no critic)."""
        prep = self.x.prepare(examples, prompts)
        embeds = self.x.embed(prep)
        logp = sequence_logprobs(self.x.model, embeds, prep.prompts.mask, ids.to(embeds.device),
                                 mask.to(embeds.device), temperature=self.s.temperature, group_size=group_size)
        if group_size > 1:
            return logp, torch.zeros_like(logp)
        T, Pn = ids.shape[1], embeds.shape[1]
        h = self._hidden[:, Pn - 1:Pn - 1 + T].detach()  # the state before each response token
        values = self.value_head(h) * mask.to(h.device).float()
        return logp, values

    # --- rollout ---------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, generator: torch.Generator, measure_kl: bool = False) -> Rollout:
        """One batch of G samples per prompt, scored. ``measure_kl``: run the reference pass even at
        ``kl_beta = 0``, so that the batch's KL to the warm start is measured (it enters no reward then)."""
        s = self.s
        G = s.group_size
        parts = []
        n_left = s.ppo_batch // G // self.ranks.world  # prompts: this rank's share of the global batch
        while n_left > 0:
            n = min(s.prompts_per_chunk, n_left)
            users, items, examples = self.sample_pairs(n, generator)
            prompts = self.x.prompts(examples)
            with self._timed("prompt"):
                prep = self.x.prepare(examples, prompts)
                embeds, pmask = self.x.embed(prep), prep.prompts.mask
            if G > 1:  # METHOD: G samples per prompt, from one prompt encoding (bridge + embeddings) expanded
                embeds, pmask, examples, prompts = expand_groups(G, embeds, pmask, examples, prompts)
                users, items = (torch.as_tensor(t).repeat_interleave(G) for t in (users, items))
            with self._timed("generate"):
                out = generate(self.x.model, self.x.tok, embeds, pmask, max_new_tokens=s.max_new_tokens,
                               temperature=s.temperature, top_p=s.top_p, score=False,
                               group_size=G if s.share_prompts else 1)
            ids, mask = out.response_ids.cpu(), out.response_mask.cpu()
            g = G if self.shares_prompts else 1
            with self._timed("policy_pass"):
                old_logp, values = self.forward(examples, prompts, ids, mask, g)
            if s.kl_beta != 0 or measure_kl:
                with self._timed("reference_pass"), self.reference_weights():
                    ref_logp, _ = self.forward(examples, prompts, ids, mask, g)
            else:  # no KL term: the reference pass would only feed a logged diagnostic
                ref_logp = old_logp
            shown = [shown_history(e.history, q.n_history) for e, q in zip(examples, prompts)]
            with self._timed("reward"):
                reward, ctr = self.reward_fn(users, items, out.texts, [r[k].tolist() for r, k in zip(ids, mask)],
                                             shown)
            parts.append((examples, prompts, users, items, ids, mask, old_logp.cpu(), ref_logp.cpu(),
                          values.cpu(), reward.float().cpu(), ctr.float().cpu(), out.texts))
            n_left -= n
        ex = [e for p in parts for e in p[0]]
        pr = [q for p in parts for q in p[1]]
        users = torch.cat([torch.as_tensor(p[2]) for p in parts])
        items = torch.cat([torch.as_tensor(p[3]) for p in parts])
        ids = _pad_cat([p[4] for p in parts], self.x.tok.pad_token_id)
        mask = _pad_cat([p[5] for p in parts], False)
        old_logp, ref_logp, values = (_pad_cat([p[k] for p in parts], 0.0) for k in (6, 7, 8))
        reward, ctr = torch.cat([p[9] for p in parts]), torch.cat([p[10] for p in parts])
        texts = [t for p in parts for t in p[11]]
        if s.advantage == "gae" and not bool(self.value_head.started):
            start = self.ranks.sum(float(reward.mean())) / self.ranks.world  # the global batch's mean
            self.value_head.start_at(start)  # METHOD: the critic starts at the reward's level
            values = (values + start) * mask
        adv, returns, kl = P.advantages(s.advantage, reward, old_logp, ref_logp, values, mask, kl_beta=s.kl_beta,
                                        kl_kind=s.kl_kind, group_size=G, gamma=s.gamma, lam=s.lam,
                                        total=self.ranks.sum_tensor if self.ranks.world > 1 else None)
        return Rollout(ex, pr, users, items, ids, mask, old_logp, ref_logp, values, adv, returns, kl, reward, ctr,
                     texts)

    # --- update ----------------------------------------------------------------------------------
    def snapshot(self) -> list[torch.Tensor]:
        """Copies of every tensor the optimizer trains (policy, value head, store), for :meth:`restore`."""
        return [p.detach().clone() for p in self._all_params()]

    def restore(self, values: Sequence[torch.Tensor]) -> None:
        """Put a :meth:`snapshot` back (the drift guard's rollback) and drop AdamW's moments of every
        parameter, so the next step does not replay the momentum that drove the run off."""
        params = self._all_params()
        if len(values) != len(params):
            raise ValueError(f"a snapshot of {len(params)} tensors is needed; found {len(values)}")
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v.to(p))
        self.opt.state.clear()

    def _all_params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def update(self, b: Rollout, generator: torch.Generator) -> dict[str, float]:
        s = self.s
        B = len(b.examples)
        mb = s.micro_batch_size * s.grad_accum
        stats = {k: [] for k in ("pg_loss", "vf_loss", "clip_frac", "approx_kl", "vf_clip_frac", "grad_norm")}
        G = s.group_size
        g = G if self.shares_prompts and s.micro_batch_size % G == 0 else 1  # micro-batches of whole groups
        for _ in range(s.epochs):
            order = torch.randperm(B, generator=generator)
            if g > 1:  # whole groups, in the order their first row drew (the same random draws either way)
                first = torch.empty(B, dtype=torch.long)
                first[order] = torch.arange(B)
                groups = first.view(B // G, G).min(1).values.argsort()
                order = (groups[:, None] * G + torch.arange(G)).flatten()
            for start in range(0, B, mb):
                idx = order[start:start + mb]
                self.opt.zero_grad(set_to_none=True)
                finite = True
                n_tok = self.ranks.sum(float(b.response_mask[idx].sum()))  # the global mini-batch's tokens
                for ms in range(0, len(idx), s.micro_batch_size):
                    j = idx[ms:ms + s.micro_batch_size]
                    T = int(b.response_mask[j].sum(1).max())  # trim the micro-batch's common padding
                    ids, mask = b.response_ids[j, :T], b.response_mask[j, :T]
                    t_fwd = time.perf_counter()
                    logp, v = self.forward([b.examples[i] for i in j], [b.prompts[i] for i in j], ids, mask, g)
                    dev = logp.device
                    m = mask.to(dev)
                    pl = P.clipped_policy_loss(logp, b.old_logp[j, :T].to(dev), b.advantages[j, :T].to(dev), m,
                                               s.clip)  # METHOD: PPO clipped surrogate
                    if s.advantage == "gae":  # the critic exists only for GAE
                        vl, vclip = P.clipped_value_loss(v, b.values[j, :T].to(dev), b.returns[j, :T].to(dev), m,
                                                         s.value_clip)
                    else:
                        vl = vclip = torch.zeros((), device=dev)
                    # token-weighted accumulation: the mini-batch loss is the mean over all its tokens
                    w = float(mask.sum()) / max(n_tok, 1.0)
                    loss = (pl.loss + s.vf_coef * vl) * w
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    self.phase_seconds["update_pass"] = (self.phase_seconds.get("update_pass", 0.0)
                                                         + time.perf_counter() - t_fwd)
                    for k, val in (("pg_loss", pl.loss), ("vf_loss", vl), ("clip_frac", pl.clip_frac),
                                   ("approx_kl", pl.approx_kl), ("vf_clip_frac", vclip)):
                        stats[k].append(float(val.detach()))
                finite = self.ranks.all_true(finite)  # one rank's non-finite loss skips the step on every rank
                if finite:
                    self.ranks.sum_grads(self._all_params())  # DDP: Σ over ranks = the global mini-batch's gradient
                    gn = torch.nn.utils.clip_grad_norm_(self._all_params(), s.grad_clip)  # Huang et al. #11
                    finite = bool(torch.isfinite(gn))
                    stats["grad_norm"].append(float(gn))
                if not finite:
                    self.skipped_steps += 1
                    log.warning("non-finite PPO loss or gradient: optimizer step skipped (%d so far)",
                                self.skipped_steps)
                    self.opt.zero_grad(set_to_none=True)
                    continue
                with self._timed("optimizer"):
                    self.shield.before_step() if self.shield is not None else None
                    self.opt.step()
                if self.shield is not None:
                    t = time.perf_counter()
                    self.shield.after_step()  # METHOD: the shield on the shared store after every AdamW step
                    self.shield_seconds += time.perf_counter() - t
        out = {k: (sum(v) / len(v) if v else math.nan) for k, v in stats.items()}
        out["explained_variance"] = (P.explained_variance(b.values, b.returns, b.response_mask)
                                     if s.advantage == "gae" else math.nan)
        return out

    def step(self, generator: torch.Generator, measure_kl: bool = False) -> tuple[dict[str, float], Rollout]:
        """One PPO iteration → (metrics, the batch). ``objective/kl`` is NaN where it was not measured
        (``kl_beta = 0`` without ``measure_kl``: no reference pass ran)."""
        self.phase_seconds = {}
        t0 = time.time()
        b = self.rollout(generator, measure_kl)
        t1 = time.time()
        sh0 = self.shield_seconds
        u = self.update(b, generator)
        t2 = time.time()
        n_tok = int(b.response_mask.sum())
        m = b.response_mask
        metrics = {
            "env/reward": float(b.reward.mean()), "env/ctr": float(b.ctr.mean()),
            "objective/kl": float((b.kl * m).sum(1).mean()) if self.s.kl_beta != 0 or measure_kl else math.nan,
            "objective/entropy": float(-(b.old_logp * m).sum() / max(n_tok, 1)),  # sampled-token estimate
            "losses/policy": u["pg_loss"], "losses/value": u["vf_loss"], "losses/approx_kl": u["approx_kl"],
            "losses/clip_frac": u["clip_frac"], "losses/value_clip_frac": u["vf_clip_frac"],
            "losses/grad_norm": u["grad_norm"], "losses/explained_variance": u["explained_variance"],
            "charts/response_len": n_tok / len(b.examples), "charts/tokens_per_s": n_tok / max(t2 - t0, 1e-9),
            "charts/rollout_s": t1 - t0, "charts/update_s": t2 - t1, "charts/skipped_steps": self.skipped_steps,
            "charts/shield_s": self.shield_seconds - sh0, "charts/step_s": t2 - t0,
            **{f"time/{k}_s": self.phase_seconds.get(k, 0.0) for k in PHASES},
        }
        if self.shield is not None:
            metrics.update(self.shield.stats())
        # over ranks: means of equal shares (= the global batch's means), throughput summed
        return self.ranks.reduce_metrics(metrics, sums=("charts/tokens_per_s",)), b
