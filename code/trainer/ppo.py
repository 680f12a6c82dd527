"""Shielded PPO for the explainer: rollouts → per-token rewards → GAE → clipped PPO epochs → shield.

Importable, no file I/O (the stage script ``run_recrl_cli.py`` does loading, logging and checkpoints).

One iteration (``PPOTrainer.step``), DESIGN.md §4.2:

1. **Rollout** — ``ppo_batch`` (user, slate item) pairs, generated ``sim_batch`` at a time with the
   current policy (``generation.generate``); the reward function (the user simulator, or a test reward)
   scores each explanation.
2. **Old / reference log-probs and values** — a no-grad pass of the current policy gives the old log-probs
   and the value head's values; a second no-grad pass with the *warm-start* weights swapped in gives the
   reference log-probs. NOTE: the reference policy is the warm start itself (initial LoRA + bridge + store
   ``E0``). Instead of a second model in memory we keep a copy of the initial *trainable* tensors only
   (LoRA, bridge, ``E``: a few MB) and swap them in for one forward (:meth:`PPOTrainer.reference_weights`);
   the frozen base weights are shared, so this is exactly the warm-start policy.
3. **Rewards** — ``r_t = −kl_beta·KL_t`` on every response token plus the simulator reward at the last one
   (Ziegler et al. 2019, arXiv:1909.08593 §2.2; Stiennon et al. 2020, arXiv:2009.01325 eq. 1).
4. **GAE** (Schulman et al. 2016, arXiv:1506.02438) and advantage whitening (Huang et al. 2022, "The 37
   Implementation Details of PPO", detail #7).
5. **PPO epochs** — ``epochs`` passes over the batch in shuffled mini-batches of
   ``micro_batch_size × grad_accum``; clipped surrogate + clipped value loss (Schulman et al. 2017,
   arXiv:1707.06347 eq. 7; Huang et al. 2022 #9); global gradient-norm clipping (#11); AdamW.
6. **Shield** — after every optimizer step, ``Shield.after_step`` projects the store's update off the
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from ..explainer.generation import generate, sequence_logprobs
from ..explainer.policy import Explainer
from ..projection.shield import Shield
from . import ppo_math as P

log = logging.getLogger("recrl")

# (user ids (B,), item ids (B,), texts, response token ids per text) → (reward (B,), click probability (B,))
RewardFn = Callable[[torch.Tensor, torch.Tensor, Sequence[str], list], tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass
class PPOSettings:
    ppo_batch: int = 8           # explanations per PPO iteration
    sim_batch: int = 4           # explanations generated (and scored) at a time
    epochs: int = 2              # PPO epochs over each batch
    micro_batch_size: int = 2
    grad_accum: int = 2          # micro-batches per optimizer step
    lr: float = 1e-4             # LoRA + bridge + value head
    store_lr: float = 1e-3       # the shared store E (its own learning rate)
    weight_decay: float = 0.0
    kl_beta: float = 0.05
    kl_kind: str = "k1"          # k1 | k3 (ppo_math.kl_penalty)
    gamma: float = 1.0           # a response is one episode; no discount (Ziegler et al. 2019)
    lam: float = 0.95
    clip: float = 0.2            # policy ratio clip ε
    value_clip: float = 0.2
    vf_coef: float = 0.5
    grad_clip: float = 1.0
    max_new_tokens: int = 40
    temperature: float = 1.0
    top_p: float = 1.0
    value_hidden: int = 256


class ValueHead(nn.Module):
    """V(s_t) from the policy's final hidden state: LayerNorm → Linear → GELU → Linear(1)."""

    def __init__(self, d_model: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

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


class Batch(NamedTuple):
    """One PPO batch of B explanations (T = longest response).

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
    store (``store_lr``, no weight decay; absent in frozen mode).
    """

    def __init__(self, explainer: Explainer, shield: Shield | None, settings: PPOSettings,
                 sample_pairs: Callable, reward_fn: RewardFn, value_head: ValueHead | None = None):
        self.x, self.shield, self.s = explainer, shield, settings
        self.sample_pairs, self.reward_fn = sample_pairs, reward_fn
        model = explainer.model
        self.value_head = value_head or ValueHead(model.config.hidden_size, settings.value_hidden)
        self.value_head.to(explainer.device)
        self.policy_params = explainer.trainable_parameters()
        self.store = shield.param if shield is not None else None
        store_trains = self.store is not None and shield.cfg.mode != "frozen"
        explainer.store_grad = store_trains  # frozen: E is detached in the bridge, no gradient at all
        groups = [{"params": self.policy_params, "lr": settings.lr, "weight_decay": settings.weight_decay},
                  {"params": list(self.value_head.parameters()), "lr": settings.lr, "weight_decay": 0.0}]
        if store_trains:
            self.store.requires_grad_(True)
            groups.append({"params": [self.store], "lr": settings.store_lr, "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups)
        # the warm-start (reference) policy's trainable tensors, swapped in for the reference pass
        self.ref_state = [p.detach().clone() for p in self._ref_params()]
        self._hidden: torch.Tensor | None = None
        final_norm(model).register_forward_hook(self._capture)
        model.eval()  # NOTE: no dropout, so rollout and update log-probs are the same function
        self.skipped_steps = 0
        self.shield_seconds = 0.0  # time spent in the shield (its overhead)

    # --- plumbing --------------------------------------------------------------------------------
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

    def forward(self, examples, prompts, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs (B, T), values (B, T)) of the given responses under the current policy."""
        prep = self.x.prepare(examples, prompts)
        embeds = self.x.embed(prep)
        logp = sequence_logprobs(self.x.model, embeds, prep.prompts.mask, ids.to(embeds.device),
                                 mask.to(embeds.device), temperature=self.s.temperature)
        T, Pn = ids.shape[1], embeds.shape[1]
        h = self._hidden[:, Pn - 1:Pn - 1 + T].detach()  # the state before each response token
        values = self.value_head(h) * mask.to(h.device).float()
        return logp, values

    # --- rollout ---------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, generator: torch.Generator) -> Batch:
        s = self.s
        parts = []
        n_left = s.ppo_batch
        while n_left > 0:
            n = min(s.sim_batch, n_left)
            users, items, examples = self.sample_pairs(n, generator)
            prompts = [self.x.prompt(ex) for ex in examples]
            prep = self.x.prepare(examples, prompts)
            out = generate(self.x.model, self.x.tok, self.x.embed(prep), prep.prompts.mask,
                           max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
            ids, mask = out.response_ids.cpu(), out.response_mask.cpu()
            old_logp, values = self.forward(examples, prompts, ids, mask)
            with self.reference_weights():
                ref_logp, _ = self.forward(examples, prompts, ids, mask)
            reward, ctr = self.reward_fn(users, items, out.texts, [r[k].tolist() for r, k in zip(ids, mask)])
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
        # METHOD: per-token KL penalty against the warm-start policy + the simulator reward at the last token
        rewards, kl = P.per_token_rewards(reward, old_logp, ref_logp, mask, s.kl_beta, s.kl_kind)
        adv, returns = P.gae(rewards, values, mask, s.gamma, s.lam)  # METHOD: GAE (Schulman et al. 2016)
        if int(mask.sum()) >= 2:
            adv = P.whiten(adv, mask)  # METHOD: advantage whitening (Huang et al. 2022 #7)
        return Batch(ex, pr, users, items, ids, mask, old_logp, ref_logp, values, adv, returns, kl, reward, ctr,
                     texts)

    # --- update ----------------------------------------------------------------------------------
    def restore_store(self, values: torch.Tensor) -> None:
        """Set the store to ``values`` (the drift guard's rollback) and drop AdamW's moments for it, so the
        next step does not replay the momentum that drove it off."""
        if self.store is None:
            return
        with torch.no_grad():
            self.store.copy_(values)
        self.opt.state.pop(self.store, None)

    def _all_params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def update(self, b: Batch, generator: torch.Generator) -> dict[str, float]:
        s = self.s
        B = len(b.examples)
        mb = s.micro_batch_size * s.grad_accum
        stats = {k: [] for k in ("pg_loss", "vf_loss", "clip_frac", "approx_kl", "vf_clip_frac", "grad_norm")}
        new_values = torch.zeros_like(b.values)
        for _ in range(s.epochs):
            order = torch.randperm(B, generator=generator)
            for start in range(0, B, mb):
                idx = order[start:start + mb]
                self.opt.zero_grad(set_to_none=True)
                finite = True
                n_tok = float(b.response_mask[idx].sum())
                for ms in range(0, len(idx), s.micro_batch_size):
                    j = idx[ms:ms + s.micro_batch_size]
                    T = int(b.response_mask[j].sum(1).max())  # trim the micro-batch's common padding
                    ids, mask = b.response_ids[j, :T], b.response_mask[j, :T]
                    logp, v = self.forward([b.examples[i] for i in j], [b.prompts[i] for i in j], ids, mask)
                    dev = logp.device
                    m = mask.to(dev)
                    pl = P.clipped_policy_loss(logp, b.old_logp[j, :T].to(dev), b.advantages[j, :T].to(dev), m,
                                               s.clip)  # METHOD: PPO clipped surrogate
                    vl, vclip = P.clipped_value_loss(v, b.values[j, :T].to(dev), b.returns[j, :T].to(dev), m,
                                                     s.value_clip)
                    # token-weighted accumulation: the mini-batch loss is the mean over all its tokens
                    w = float(mask.sum()) / max(n_tok, 1.0)
                    loss = (pl.loss + s.vf_coef * vl) * w
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    new_values[j, :T] = v.detach().cpu()
                    for k, val in (("pg_loss", pl.loss), ("vf_loss", vl), ("clip_frac", pl.clip_frac),
                                   ("approx_kl", pl.approx_kl), ("vf_clip_frac", vclip)):
                        stats[k].append(float(val.detach()))
                if finite:
                    gn = torch.nn.utils.clip_grad_norm_(self._all_params(), s.grad_clip)  # Huang et al. #11
                    finite = bool(torch.isfinite(gn))
                    stats["grad_norm"].append(float(gn))
                if not finite:
                    self.skipped_steps += 1
                    log.warning("non-finite PPO loss or gradient: optimizer step skipped (%d so far)",
                                self.skipped_steps)
                    self.opt.zero_grad(set_to_none=True)
                    continue
                self.shield.before_step() if self.shield is not None else None
                self.opt.step()
                if self.shield is not None:
                    t = time.perf_counter()
                    self.shield.after_step()  # METHOD: the shield on the shared store after every AdamW step
                    self.shield_seconds += time.perf_counter() - t
        out = {k: (sum(v) / len(v) if v else math.nan) for k, v in stats.items()}
        out["explained_variance"] = P.explained_variance(b.values, b.returns, b.response_mask)
        return out

    def step(self, generator: torch.Generator) -> tuple[dict[str, float], Batch]:
        """One PPO iteration → (metrics, the batch)."""
        t0 = time.time()
        b = self.rollout(generator)
        t1 = time.time()
        sh0 = self.shield_seconds
        u = self.update(b, generator)
        t2 = time.time()
        n_tok = int(b.response_mask.sum())
        m = b.response_mask
        metrics = {
            "env/reward": float(b.reward.mean()), "env/ctr": float(b.ctr.mean()),
            "objective/kl": float((b.kl * m).sum(1).mean()),  # per-sequence KL vs the warm start
            "objective/entropy": float(-(b.old_logp * m).sum() / max(n_tok, 1)),  # sampled-token estimate
            "losses/policy": u["pg_loss"], "losses/value": u["vf_loss"], "losses/approx_kl": u["approx_kl"],
            "losses/clip_frac": u["clip_frac"], "losses/value_clip_frac": u["vf_clip_frac"],
            "losses/grad_norm": u["grad_norm"], "losses/explained_variance": u["explained_variance"],
            "charts/response_len": n_tok / len(b.examples), "charts/tokens_per_s": n_tok / max(t2 - t0, 1e-9),
            "charts/rollout_s": t1 - t0, "charts/update_s": t2 - t1, "charts/skipped_steps": self.skipped_steps,
            "charts/shield_s": self.shield_seconds - sh0, "charts/step_s": t2 - t0,
        }
        if self.shield is not None:
            metrics.update(self.shield.stats())
        return metrics, b
