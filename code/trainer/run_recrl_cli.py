"""Shielded PPO (DESIGN.md §4.2): the explainer learns from the user simulator while the shared store co-adapts.

    python code/trainer/run_recrl_cli.py --dataset ml100k --projection_basis checkpoints/basis_ml100k.pt \
        --lora_rank 16 --kl_beta 0.05 --max_steps 2 --tag shielded
    # ablations: --no_projection ; --kl_beta 0.0 ; --freeze_store

Reads ``data/proc/<D>/``, the ranker, the warm start ``checkpoints/lora_init_<D>/`` and (shielded) the
basis; writes ``logs/<D>/<tag>/`` (train.log, metrics.jsonl) and ``checkpoints/recrl/<D>/<tag>/step-XXXXXX/``
(see :mod:`.run_folder`: LoRA, bridge, value head, store delta, optimizer, RNG, config, manifest) with a
``latest`` pointer per run and ``checkpoints/recrl/<D>/latest`` naming the dataset's most recently saved
checkpoint of any tag. ``--resume auto`` continues from the run's ``latest``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from shielded_recrl.common import atomic, distributed
from shielded_recrl.common.configs import parse_config, to_dict
from shielded_recrl.common.device import prepare_runtime
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import MetricsLog, read_metrics, setup_logging
from shielded_recrl.common.paths import checkpoints_dir, logs_dir, portable_path, resolve_user_path
from shielded_recrl.common.seeding import rank_seed, rng_state, seed_everything, set_rng_state, torch_generator
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.eval.ranking_drift import drift_report, paired_diff, reference_scores
from shielded_recrl.explainer.checkpoint import read_info
from shielded_recrl.explainer.policy import Example
from shielded_recrl.projection.artifacts import load_basis
from shielded_recrl.projection.shield import Shield, ShieldConfig
from shielded_recrl.ranker.attribution import shown_attribution
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker
from shielded_recrl.ranker.evaluate import sample_users
from shielded_recrl.trainer import run_folder
from shielded_recrl.trainer.config import RecRLConfig, ppo_settings
from shielded_recrl.trainer.ppo import PPOTrainer, ValueHead
from shielded_recrl.trainer.ppo_math import lr_scale
from shielded_recrl.trainer.simulator import SimulatorConfig, UserSimulator

log = logging.getLogger("recrl")
MODE_FIX = "Pass exactly one of --projection_basis FILE (shielded), --no_projection or --freeze_store."
STREAMS = ("rng", "generator", "click_generator")  # one rank's random streams in a checkpoint's state.pt


def parse(argv=None) -> RecRLConfig:
    try:
        cfg, _ = parse_config(RecRLConfig, argv, description=__doc__.splitlines()[0],
                              default_yaml="experiments/recrl_default.yaml")
    except ValueError as err:
        raise InputError("the command line and --config", "consistent PPO settings", str(err)) from None
    check(cfg)
    return cfg


def check(cfg: RecRLConfig) -> None:
    n_modes = sum([bool(cfg.projection_basis), cfg.no_projection, cfg.freeze_store])
    if n_modes != 1:
        raise InputError("command line", "a store mode", "none" if n_modes == 0 else "more than one", MODE_FIX)
    if cfg.tag in ("", ".", "..", *run_folder.RESERVED_TAGS) or "/" in cfg.tag or "\\" in cfg.tag:
        raise InputError("--tag", f"a folder name other than {run_folder.RESERVED_TAGS} (checkpoints/recrl/<D>/latest "
                         "is a pointer; the others are other stages' folders under logs/<D>/)", repr(cfg.tag))
    if cfg.max_new_tokens > cfg.explanation_max_len:
        raise InputError("--max_new_tokens", f"at most --explanation_max_len ({cfg.explanation_max_len})",
                         str(cfg.max_new_tokens), "Lower --max_new_tokens or raise --explanation_max_len.")
    check_data_parallel(cfg)


def check_data_parallel(cfg: RecRLConfig) -> None:
    """Under ``accelerate launch``: refuse parameter sharding (ZeRO-3/FSDP: the shield needs E whole) and a
    global batch that does not split into whole groups, the same number on every rank."""
    distributed.check_launch()
    n = distributed.world_size()
    unit = n * cfg.group_size
    if n > 1 and cfg.ppo_batch % unit:
        raise InputError("--ppo_batch", f"a multiple of processes × --group_size ({n} × {cfg.group_size} = {unit}): "
                         "the global batch is split into whole groups, the same number on every rank",
                         str(cfg.ppo_batch), f"Use --ppo_batch {(cfg.ppo_batch // unit + 1) * unit} (or a multiple of "
                         f"{unit}), or launch a number of processes that divides {cfg.ppo_batch // cfg.group_size}.")


# --- setup -------------------------------------------------------------------------------------------
def make_shield(cfg: RecRLConfig, ranker, ranker_path: Path) -> tuple[Shield, dict]:
    E = ranker.item_emb.weight
    if cfg.mode == "shielded":
        path = resolve_user_path(cfg.projection_basis)
        basis = load_basis(path, d=E.shape[1], ranker_sha256=checkpoint_sha256(ranker_path))
        if cfg.trust_radius >= 0:
            rho = cfg.trust_radius
        elif "trust_radius" not in basis:
            raise InputError(path, "a basis that records its trust radius ρ (run_basis.py writes it)",
                             "no trust_radius key", "Rebuild it with run_basis.py, or pass --trust_radius ρ "
                             "(0.2 is the shipped default; docs/shield.md).")
        else:
            rho = basis["trust_radius"]
            if rho is None:
                log.warning("%s records trust_radius None: the shield runs without a trust region", path)
        info = {"basis": str(path), "rank": int(basis["rank"]), "energy": float(basis["energy"]), "trust_radius": rho}
        return Shield(E, basis["Q"], ShieldConfig(mode="shielded", energy=float(basis["energy"]), trust_radius=rho)), info
    rho = cfg.trust_radius if cfg.trust_radius >= 0 else None
    return Shield(E, None, ShieldConfig(mode=cfg.mode, trust_radius=rho)), {"trust_radius": rho}


def make_pair_sampler(sim: UserSimulator, histories, exclude: set[int] = frozenset()):
    """(n, generator) → users, items, examples: a user (never one of ``exclude``, the panel's), and one item
    drawn uniformly from their slate."""
    allowed = torch.tensor([u for u in range(1, sim.n_users + 1) if u not in exclude]) if exclude else None

    def sample(n: int, generator: torch.Generator):
        if allowed is None:
            users = sim.sample_users(n, generator)
        else:
            perm = torch.randperm(len(allowed), generator=generator)
            users = allowed[perm[:n]] if n <= len(allowed) else allowed[torch.randint(len(allowed), (n,),
                                                                                      generator=generator)]
        slate = sim.slate(users)
        pick = torch.randint(slate.shape[1], (n,), generator=generator)
        items = slate[torch.arange(n), pick]
        ex = [Example(int(u), int(i), histories[int(u) - 1], "") for u, i in zip(users, items)]
        return users, items, ex

    return sample


# --- the validation panel ----------------------------------------------------------------------------
PANEL_SEED_OFFSET = 104729  # the sampled panel's draws: a stream of their own, fixed by --seed


def make_panel(sim: UserSimulator, histories, n: int, seed: int) -> list[Example]:
    """``n`` seeded users (a generator of their own, so the panel does not depend on anything else) and
    each one's top slate item: the same pairs at every evaluation."""
    g = torch.Generator().manual_seed(seed + 7919)
    users = torch.randperm(sim.n_users, generator=g)[:n] + 1
    items = sim.slate(users)[:, 0]
    return [Example(int(u), int(i), histories[int(u) - 1], "") for u, i in zip(users, items)]


class PanelScores(NamedTuple):
    """Per panel pair, each (n,) float64, the mean over the pair's texts: q, the click probability,
    faithfulness@1, and the failure indicators as q's rules define them (docs/simulator.md; the same
    0/1 rules as evaluation's ``hallucinated``, ``invented_title``, ``prompt_copy``, ``self_reference``,
    ``unfinished``)."""

    q: torch.Tensor
    click: torch.Tensor
    faith1: torch.Tensor
    self_reference: torch.Tensor
    hallucinated: torch.Tensor
    invented_title: torch.Tensor
    prompt_copy: torch.Tensor
    unfinished: torch.Tensor


@torch.no_grad()
def panel_scores(trainer: PPOTrainer, sim: UserSimulator, panel: list[Example], decoding: str = "greedy",
                 samples: int = 1, seed: int = 0) -> PanelScores:
    """:class:`PanelScores` of the panel pairs' explanations under the trainer's current policy (the
    bridge reads the current store); faithfulness@1 to the ranker's leave-one-out reasons on the original
    store (``sim.reasons``; docs/faithfulness.md), whatever ``w_faithfulness``.

    ``decoding`` greedy: one greedy text per pair. ``sample``: ``samples`` texts per pair at the run's
    temperature and top-p, drawn from ``seed`` inside a forked random state (the same draws at every call,
    so the warm start and each step are compared on common random numbers, and the training's streams are
    untouched); a pair's scores are the means over its texts."""
    from shielded_recrl.eval.faithfulness import faithfulness_at_k, named_shown_items
    from shielded_recrl.explainer.generation import expand_groups, generate
    from shielded_recrl.explainer.prompts import shown_history
    from shielded_recrl.trainer.quality import failure_indicators

    x, s = trainer.x, trainer.s
    K = samples if decoding == "sample" else 1
    per_chunk = max(1, s.sim_batch // K)
    parts = {f: [] for f in PanelScores._fields}
    with torch.random.fork_rng():  # the CPU's and every visible CUDA device's random state, restored after
        torch.manual_seed(seed)
        for a in range(0, len(panel), per_chunk):
            exs = panel[a:a + per_chunk]
            prompts = x.prompts(exs)
            prep = x.prepare(exs, prompts)
            embeds, pmask = x.embed(prep), prep.prompts.mask
            if K > 1:  # the pair's K samples from one prompt encoding, as in the rollout
                embeds, pmask, exs, prompts = expand_groups(K, embeds, pmask, exs, prompts)
            out = generate(x.model, x.tok, embeds, pmask, max_new_tokens=s.max_new_tokens,
                           do_sample=decoding == "sample", temperature=s.temperature, top_p=s.top_p, score=False,
                           group_size=K)
            shown = [shown_history(e.history, q.n_history) for e, q in zip(exs, prompts)]
            p, qual = sim.click_prob(torch.tensor([e.user_id for e in exs]), torch.tensor([e.item_id for e in exs]),
                                     out.texts, shown)
            attr = sim.reasons([e.history for e in exs], [e.item_id for e in exs], shown)
            named = named_shown_items(sim.quality.titles, out.texts, shown)
            hit = faithfulness_at_k(named, attr.items, attr.contributions, k=1).hit
            values = {"q": qual.q, "click": p.double().cpu(), "faith1": hit,
                      **failure_indicators(qual, sim.quality.cfg)}
            for f in PanelScores._fields:
                parts[f].append(torch.as_tensor(np.asarray(values[f], dtype=np.float64)).reshape(-1, K).mean(1))
    return PanelScores(*(torch.cat(parts[f]) for f in PanelScores._fields))


PANEL_METRICS = (("q", "q", 1.0), ("ctr_pp", "click", 100.0), ("faith1_pts", "faith1", 100.0),
                 ("self_reference_pts", "self_reference", 100.0))


def panel_metrics(now: PanelScores, warm: PanelScores) -> dict:
    """Paired differences policy − warm start on the panel's pairs (mean, paired SE): q, CTR,
    faithfulness@1 and the self-reference rate (the last three in points)."""
    out = {}
    for name, field, scale in PANEL_METRICS:
        d = paired_diff(getattr(warm, field), getattr(now, field))
        out.update({f"panel/{name}": d.mean_b * scale, f"panel/d{name}": d.diff * scale,
                    f"panel/d{name}_se": d.se * scale})
    return out


def simulator_reward(sim: UserSimulator, kind: str, self_reference_penalty: float = 0.0):
    """The PPO reward from the simulator: its click (expected or sampled, ``--sim_reward``) or the
    explanation quality q alone (``--reward q``), less ``self_reference_penalty`` for every text that names
    the recommended item as its own reason; the click probability is returned either way (the reported
    metric, which the penalty never enters)."""

    def reward(users, items, texts, ids, shown):
        r, p, qual = sim.reward(users, items, texts, shown=shown)
        r = torch.as_tensor(qual.q, dtype=torch.float64) if kind == "q" else r
        if self_reference_penalty:
            r = r - self_reference_penalty * torch.as_tensor(qual.self_reference, dtype=r.dtype, device=r.device)
        return r, p

    return reward


# --- checkpoints ---------------------------------------------------------------------------------------
def find_resume(cfg: RecRLConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        return resolve_user_path(cfg.resume)
    folder = run_folder.latest(cfg.dataset, cfg.tag)
    if folder is None:
        log.info("--resume auto: no checkpoint of %s/%s yet; starting fresh", cfg.dataset, cfg.tag)
    return folder


def load_step(folder: Path, cfg: RecRLConfig, trainer: PPOTrainer, sim: UserSimulator) -> dict:
    """Put a checkpoint's policy, value head, store, optimizer, RNG and simulator click generator in place;
    returns its ``state.pt``."""
    ckpt = run_folder.open_checkpoint(folder)
    if (ckpt.dataset, ckpt.tag) != (cfg.dataset, cfg.tag):
        raise InputError(folder, f"a checkpoint of run {cfg.dataset}/{cfg.tag}", f"run {ckpt.dataset}/{ckpt.tag}",
                         "Resume a checkpoint of this run (or pass its --tag).")
    old = to_dict(ckpt.config)
    diff = {k: (old.get(k), v) for k, v in to_dict(cfg).items() if old.get(k) != v and k not in ("resume", "max_steps")}
    if diff:
        log.warning("resuming with a config that differs from the checkpoint's: %s", diff)
    run_folder.load_policy(ckpt, trainer.x, trainer.value_head)
    state = ckpt.state()
    state = {**state, **rank_streams(state, trainer.ranks, cfg)}  # this rank's generators
    sh = trainer.shield
    with torch.no_grad():
        sh.param.copy_(ckpt.store(sh.E0, state))
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.skipped_steps = int(state.get("skipped_steps", 0))
    set_rng_state(state["rng"])
    sim.click_generator.set_state(state["click_generator"])
    return state


def rank_streams(state: dict, ranks: distributed.Ranks, cfg: RecRLConfig) -> dict:
    """This rank's random streams (:data:`STREAMS`) in a checkpoint's state: rank 0's are the top-level keys
    (all that a one-process checkpoint has), every rank's are under ``ranks``. Resumed on another number of
    processes, a rank the checkpoint has no streams for gets fresh ones (seeded from seed, rank and step)."""
    saved = state.get("ranks") or [{k: state[k] for k in STREAMS}]
    if len(saved) != ranks.world:
        log.warning("the checkpoint was written by %d process(es) and resumes on %d: the run is not the one an "
                    "uninterrupted run on either would have made", len(saved), ranks.world)
    if ranks.rank < len(saved):
        return saved[ranks.rank]
    seed = rank_seed(cfg.seed, ranks.rank, int(state["step"]))
    seed_everything(seed)
    return {"rng": rng_state(), "generator": torch_generator(seed).get_state(),
            "click_generator": torch_generator(seed + 1).get_state()}


def shared_tensors(trainer: PPOTrainer) -> dict:
    """What data parallelism keeps bit-identical on every rank (checked: ``Ranks.check_identical``)."""
    return {"store E": trainer.shield.param, "policy (LoRA, bridge)": trainer.policy_params,
            "value head": list(trainer.value_head.parameters())}


# --- the stage ---------------------------------------------------------------------------------------
class Built(NamedTuple):
    """Everything one PPO run is made of (:func:`build`), before its first step."""

    data: object
    ranker: torch.nn.Module
    shield: Shield
    shield_info: dict
    explainer: object
    histories: list
    sim: UserSimulator
    panel: list
    trainer: PPOTrainer
    resolved: dict  # the run's inputs, as portable paths (the checkpoint's record)
    device: torch.device


def build(cfg: RecRLConfig, reward_fn=None) -> Built:
    """The run's runtime (seeds, device), data, ranker, shield, explainer, simulator, fixed panel and
    trainer, before any step. ``reward_fn`` replaces the simulator's reward (tests, benchmarks). Under
    ``accelerate launch`` every rank builds the same run on its own device; its torch seed (generation) and
    click stream are its own (rank 0's are the one-process run's)."""
    ranks = distributed.init(cfg.device)
    device, dtype = prepare_runtime(seed=rank_seed(cfg.seed, ranks.rank), device=ranks.device_name(cfg.device),
                                    dtype=cfg.dtype, threads=cfg.threads)

    data = load_processed(cfg.dataset)
    ranker_path = resolve_user_path(cfg.ranker_ckpt) if cfg.ranker_ckpt else checkpoints_dir() / f"sasrec_{cfg.dataset}.pt"
    ranker, _ = load_ranker(ranker_path, expect_id_map=data.id_map_sha256)
    ex_dir = resolve_user_path(cfg.explainer_ckpt) if cfg.explainer_ckpt else checkpoints_dir() / f"lora_init_{cfg.dataset}"
    warm_rank = int(read_info(ex_dir)["lora"]["rank"])
    if cfg.lora_rank and cfg.lora_rank != warm_rank:
        raise InputError("--lora_rank", f"the warm start's LoRA rank ({warm_rank}, {ex_dir})", str(cfg.lora_rank),
                         f"Pass --lora_rank {warm_rank}, or re-run the warm start with --lora_rank {cfg.lora_rank}.")
    resolved = {"ranker_ckpt": portable_path(ranker_path), "explainer_ckpt": portable_path(ex_dir)}
    if cfg.projection_basis:
        resolved["projection_basis"] = portable_path(resolve_user_path(cfg.projection_basis))
    ranker.to(device)
    shield, shield_info = make_shield(cfg, ranker, ranker_path)  # validates the basis before the LLM loads
    explainer = run_folder.build_explainer(cfg, ex_dir, data=data, ranker=ranker,
                                           ranker_sha256=checkpoint_sha256(ranker_path), device=device,
                                           dtype=dtype, trainable=True)

    # the simulator: slates from the original ranker (the explainer explains, it does not re-rank)
    histories = data.sequences("train")  # seen items, and the ranker's input (all_scores(ranker, data, "valid"))
    if reward_fn is None:
        from shielded_recrl.trainer.quality import QualityConfig, QualityScorer, load_encoder

        quality = QualityScorer(data.items, load_encoder(), QualityConfig().with_faithfulness(cfg.w_faithfulness),
                                id_map_sha256=data.id_map_sha256)  # item texts encoded when needed, cached
    else:
        quality = None
    # the ranker's reasons are read from the original store E0 (the model's own table co-adapts)
    reasons = functools.partial(shown_attribution, ranker, item_table=shield.E0.detach().clone())
    sim = UserSimulator.from_ranker(ranker, histories, quality, SimulatorConfig(
        slate_size=cfg.slate_size, reward=cfg.sim_reward, z_over=cfg.z_over, seed=cfg.seed), reasons=reasons)
    if ranks.world > 1:  # the same users' ζ_u on every rank, but each rank draws its own clicks
        sim.click_generator.manual_seed(rank_seed(cfg.seed + 1, ranks.rank))
    if cfg.panel_users > 0 and reward_fn is not None:
        raise InputError("--panel_users", "the simulator's reward (the panel scores q and CTR with it)",
                         "a replaced reward function", "Run the panel with the simulator.")
    panel = make_panel(sim, histories, cfg.panel_users, cfg.seed) if cfg.panel_users > 0 else []
    trainer = PPOTrainer(explainer, shield, ppo_settings(cfg),
                         make_pair_sampler(sim, histories, {e.user_id for e in panel}),
                         reward_fn or simulator_reward(sim, cfg.reward, cfg.self_reference_penalty),
                         ValueHead(explainer.model.config.hidden_size, cfg.value_hidden), ranks=ranks)
    return Built(data, ranker, shield, shield_info, explainer, histories, sim, panel, trainer, resolved, device)


def run(cfg: RecRLConfig, reward_fn=None) -> dict:
    """``reward_fn`` replaces the simulator's reward (tests); the simulator still picks users and slates.
    Under ``accelerate launch`` every rank runs this; rank 0 alone writes logs, metrics and checkpoints."""
    check(cfg)
    started = time.time()
    ranks = distributed.init(cfg.device)  # one process, or this rank of an `accelerate launch`
    log_dir = logs_dir() / cfg.dataset / cfg.tag
    setup_logging(log_dir / "train.log" if ranks.is_main else None, logging.INFO if ranks.is_main else logging.WARNING)
    log.info("config (mode %s): %s", cfg.mode, json.dumps(to_dict(cfg)))
    if ranks.world > 1:
        log.info("data parallel: %d ranks (%s), %d explanations each of the global batch %d", ranks.world,
                 ranks.backend, cfg.ppo_batch // ranks.world, cfg.ppo_batch)
    data, ranker, shield, shield_info, explainer, histories, sim, panel, trainer, resolved, device = \
        build(cfg, reward_fn)
    # METHOD: the drift guard compares with the original store E0 — computed before a resume puts the
    # checkpoint's store in place, so a resumed run keeps measuring drift since E0, not since the resume
    guard = cfg.monitor_every > 0
    monitor_rows = sample_users(data.n_users, cfg.monitor_users, cfg.seed)  # a fixed sample (None: all users)
    # only rank 0 checks drift (its verdict is broadcast), so only rank 0 holds the reference
    ref = reference_scores(ranker, data, "valid", item_table=shield.E0, users=monitor_rows) \
        if guard and ranks.is_main else None
    if ref is not None:
        log.info("drift guard: every %d steps on %d of %d validation users (seed %d); original NDCG@10 %.4f",
                 cfg.monitor_every, len(ref["users"]), data.n_users, cfg.seed, float(ref["ndcg"].mean()))

    gen = torch_generator(rank_seed(cfg.seed, ranks.rank))  # each rank draws its own users and slate items
    step, good = 0, trainer.snapshot()
    resume_from = ranks.broadcast(find_resume(cfg))  # rank 0's choice for all (every rank checks it: a bad
    # --resume fails on every rank instead of leaving the others waiting)
    if resume_from is not None:
        state = load_step(resume_from, cfg, trainer, sim)
        step = int(state["step"])
        gen.set_state(state["generator"])
        good = list(state["good"])
        log.info("resumed from %s at step %d", resume_from, step)

    guard_active = guard and cfg.mode != "no_projection"  # the ablation's drift stays visible
    panel_decoding = (cfg.panel_decoding, cfg.panel_samples, cfg.seed + PANEL_SEED_OFFSET)
    if panel and ranks.is_main:  # the warm start's panel texts (the reference weights are exactly the warm
        # start, resumed or not); the panel runs on rank 0 and its metrics are broadcast
        with trainer.reference_weights():
            warm_panel = panel_scores(trainer, sim, panel, *panel_decoding)
        log.info("panel: %d validation pairs; warm start q %.4f, CTR %.4f", len(panel),
                 float(warm_panel.q.mean()), float(warm_panel.click.mean()))
    best = json.loads((run_folder.run_dir(cfg.dataset, cfg.tag) / "best").read_text()) \
        if resume_from is not None and (run_folder.run_dir(cfg.dataset, cfg.tag) / "best").exists() else None
    best_dq = state.get("best_panel_dq", -float("inf")) if resume_from is not None else -float("inf")
    metrics_path = log_dir / "metrics.jsonl"
    stop_reason = "max_steps"
    with MetricsLog(metrics_path, append=resume_from is not None, tensorboard=True, enabled=ranks.is_main) as mlog:
        while step < cfg.max_steps:
            # at kl_beta 0 the reference pass still runs on panel steps, so the KL to the warm start is logged
            measure_kl = cfg.kl_beta == 0 and (step + 1) % cfg.panel_every == 0
            scale = lr_scale(step, cfg.max_steps, cfg.warmup_steps, cfg.lr_decay)  # the schedule's factor
            trainer.set_lr_scale(scale)
            metrics, batch = trainer.step(gen, measure_kl)  # metrics reduced over ranks
            metrics["charts/lr_scale"] = scale
            step += 1
            metrics["charts/peak_memory_mb"] = ranks.max(_peak_mb(device))
            verdict = None  # the drift guard's: good | rollback | stop (None: no check, or an ignored trip)
            if guard and step % cfg.monitor_every == 0 and ranks.is_main:  # rank 0 checks; its verdict is broadcast
                rep = drift_report(ranker, data, "valid", shield.param.detach(), reference=ref)
                ndcg_drop = -rep.ndcg.diff / max(rep.ndcg.mean_a, 1e-12)
                overlap = float(rep.overlap.float().mean())
                metrics.update({"monitor/val_ndcg@10": rep.ndcg.mean_b, "monitor/val_ndcg@10_orig": rep.ndcg.mean_a,
                                "monitor/ndcg_rel_drop": ndcg_drop, "monitor/ndcg_diff_se": rep.ndcg.se,
                                "monitor/top10_overlap": overlap})
                tripped = ndcg_drop > cfg.max_ndcg_drop or overlap < cfg.min_top10_overlap
                if guard_active and tripped:
                    metrics["monitor/guard_tripped"] = 1
                    log.warning("drift guard at step %d: NDCG@10 drop %.3f (max %.3f), overlap %.3f (min %.3f): %s",
                                step, ndcg_drop, cfg.max_ndcg_drop, overlap, cfg.min_top10_overlap, cfg.drift_action)
                    verdict = "stop" if cfg.drift_action == "stop" else "rollback"
                elif not tripped:
                    verdict = "good"
            if guard and step % cfg.monitor_every == 0:
                verdict = ranks.broadcast(verdict)  # every rank acts on rank 0's check (they hold the same E)
                if verdict == "stop":
                    stop_reason = "drift_guard"
                elif verdict == "rollback":
                    trainer.restore(good)  # METHOD: policy and store back to the last good check
                elif verdict == "good":
                    good = trainer.snapshot()
            on_panel = bool(panel) and step % cfg.panel_every == 0
            if on_panel:  # METHOD: the fixed panel, paired against the warm start (selection on validation)
                now = panel_scores(trainer, sim, panel, *panel_decoding) if ranks.is_main else None
                metrics.update(ranks.broadcast(panel_metrics(now, warm_panel) if ranks.is_main else None))
            mlog.log(metrics, step)
            log.info("step %d: reward %.4f ctr %.4f kl %.4f approx_kl %.2e clip %.3f vloss %.4f %.1fs | %s", step,
                     metrics["env/reward"], metrics["env/ctr"], metrics["objective/kl"], metrics["losses/approx_kl"],
                     metrics["losses/clip_frac"], metrics["losses/value"], metrics["charts/step_s"],
                     " / ".join(batch.texts[:cfg.n_samples]))
            improved = on_panel and metrics["panel/dq"] > best_dq
            if improved:
                best_dq = metrics["panel/dq"]
            save_now = step == cfg.max_steps or stop_reason != "max_steps" or improved or \
                (cfg.save_every > 0 and step % cfg.save_every == 0)
            if save_now:
                state = {"store_delta": (shield.param.detach() - shield.E0).cpu(), "optimizer": trainer.opt.state_dict(),
                         "rng": rng_state(), "generator": gen.get_state(), "click_generator": sim.click_generator.get_state(),
                         "skipped_steps": trainer.skipped_steps, "good": [t.cpu() for t in good],
                         "best_panel_dq": best_dq}
                if ranks.world > 1:  # every rank's streams, so that each resumes its own
                    state["ranks"] = ranks.gather({k: state[k] for k in STREAMS})
                if ranks.is_main:  # one writer (atomic, as in one process)
                    run_folder.save_step(cfg, resolved, step, explainer=explainer, value_head=trainer.value_head,
                                         state=state, started=started)
                    if improved:
                        run_folder.mark_best(cfg, step)
                if improved:
                    best = {"step": step}
            if ranks.world > 1 and step % cfg.rank_check_every == 0:
                ranks.check_identical(shared_tensors(trainer), f"step {step}")
            if stop_reason != "max_steps":
                break
    ranks.check_identical(shared_tensors(trainer), f"end of the run (step {step})")
    ranks.barrier()  # rank 0 has closed metrics.jsonl before any rank reads it back
    # The summary covers the whole run, resumed parts included: it is rebuilt from metrics.jsonl (one row
    # per step; a step logged twice because a run died before its checkpoint keeps its last row).
    rows = {r["step"]: r for r in read_metrics(metrics_path) if r.get("step") is not None} \
        if metrics_path.exists() else {}
    rows = [rows[k] for k in sorted(rows) if k <= step]
    first, last = (rows[0], rows[-1]) if rows else (None, None)
    summary = {"steps": step, "stop_reason": stop_reason, "mode": cfg.mode, "reward": cfg.reward,
               "advantage": cfg.advantage, **shield_info,
               "reward_first": first and first["env/reward"], "reward_last": last and last["env/reward"],
               "kl_last": last and last["objective/kl"], "skipped_steps": trainer.skipped_steps,
               "shield_s_total": round(trainer.shield_seconds, 4), "wall_s": round(time.time() - started, 2)}
    panelled = [r for r in rows if "panel/dq" in r]
    if panelled:
        summary.update(panel=[{k: r[k] for k in ("step", "panel/dq", "panel/dq_se", "panel/dctr_pp",
                                                 "panel/dctr_pp_se", "panel/dfaith1_pts", "panel/dfaith1_pts_se",
                                                 "objective/kl")
                               if k in r} for r in panelled],
                       best_step=best and best["step"])
    monitored = [r for r in rows if "monitor/val_ndcg@10" in r]
    if monitored:
        m = monitored[-1]
        summary.update(val_ndcg_last=m["monitor/val_ndcg@10"], val_ndcg_orig=m["monitor/val_ndcg@10_orig"],
                       top10_overlap_last=m["monitor/top10_overlap"])
    if ranks.is_main:
        atomic.write_json(log_dir / "summary.json", summary)
    log.info("done: %s", json.dumps(summary, default=str))
    return summary


def _peak_mb(device: torch.device) -> float:
    from shielded_recrl.explainer.init_lora import peak_memory_mb

    return round(peak_memory_mb(device), 1)


def main(argv=None) -> dict:
    return run(parse(argv))


if __name__ == "__main__":
    run_cli(main)
