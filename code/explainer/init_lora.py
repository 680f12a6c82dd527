"""Explainer warm start ("LoRA init", DESIGN.md §4.1): SFT of LoRA + bridge on reference explanations.

    python code/explainer/init_lora.py --dataset ml100k [--config experiments/explainer.yaml] [--int8]

Reads ``data/proc/<D>/`` and the ranker ``checkpoints/sasrec_<D>.pt`` (the bridge's ``h_u``, ``e_i``;
not needed with ``--no_bridge``); writes ``checkpoints/lora_init_<D>/`` (see ``checkpoint.py``) and
``logs/<D>/lora_init/`` (train.log, metrics.jsonl, samples.json: explanations before/after for a few
validation users). Validation = training references of held-out users (``val_users_fraction``).
The shared store ``E`` is frozen here (no shield in this stage); it co-adapts in the PPO trainer.
Skipped when the output folder's manifest says it is complete for the same config and inputs
(``--force`` redoes it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from shielded_recrl.common import atomic, manifest
from shielded_recrl.common.configs import parse_config, to_dict
from shielded_recrl.common.device import prepare_runtime
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import MetricsLog, setup_logging
from shielded_recrl.common.paths import checkpoints_dir, logs_dir, resolve_user_path
from shielded_recrl.common.seeding import seed_everything
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.explainer.bridge import Bridge, BridgeConfig, embedding_rms, freeze_ranker
from shielded_recrl.explainer.checkpoint import save_checkpoint
from shielded_recrl.explainer.generation import generate
from shielded_recrl.explainer.loading import OFFLINE_ALIAS, add_lora, load_base
from shielded_recrl.dataset.references import ranker_reason_explanation
from shielded_recrl.eval.faithfulness import top_contributor
from shielded_recrl.explainer.policy import Example, Explainer, ItemCatalog, PromptSettings, reference_examples
from shielded_recrl.explainer.prompts import LAYOUTS, item_kind, shown_history
from shielded_recrl.explainer.sft import SFTSettings, encode, train_sft
from shielded_recrl.ranker.attribution import shown_attribution
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker

STAGE = "lora_init"
log = logging.getLogger("recrl")


@dataclasses.dataclass
class LoraInitConfig(SFTSettings):
    """The warm-start stage's config: the optimisation settings (micro_batch_size, grad_accum, lr,
    weight_decay, warmup_steps, max_steps, epochs, eval_every, patience, grad_clip, seed) are inherited
    from :class:`SFTSettings`, where they are declared once; the fields below are the stage's own."""

    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    model: str = dataclasses.field(default=OFFLINE_ALIAS, metadata={
        "help": f"{OFFLINE_ALIAS} | hub id | model folder | .gguf file"})
    quant: str = dataclasses.field(default="none", metadata={
        "choices": ["none", "int8", "4bit"], "help": "bitsandbytes quantization (CUDA only; else full precision)"})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = dataclasses.field(default="auto", metadata={"help": "auto (bf16 on capable GPUs, else fp32) | fp32 | bf16"})
    ranker_ckpt: str = dataclasses.field(default="", metadata={"help": "default checkpoints/sasrec_<D>.pt"})
    out_dir: str = dataclasses.field(default="", metadata={"help": "default checkpoints/lora_init_<D>"})
    # LoRA (Hu et al., 2021)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: ["q", "k", "v", "o"],
                                                metadata={"help": "module names; q/k/v/o mean q_proj/…"})
    # bridge
    no_bridge: bool = dataclasses.field(default=False, metadata={"help": "ablation: no soft tokens from the ranker"})
    n_user_tokens: int = 2
    n_item_tokens: int = 2
    bridge_hidden: int = 256
    # prompt
    max_seq_len_explainer: int = dataclasses.field(default=256, metadata={"help": "prompt + response tokens"})
    explanation_max_len: int = dataclasses.field(default=48, metadata={"help": "response tokens (incl. end of turn)"})
    max_history: int = 10
    ranker_reason: bool = dataclasses.field(default=False, metadata={
        "help": "the prompt names the ranker's main reason: the shown history item whose leave-one-out deletion "
                "lowers the recommended item's SASRec score most (docs/faithfulness.md §3); saved with the "
                "checkpoint, so PPO and evaluation build the same prompts"})
    prompt_layout: str = dataclasses.field(default=LAYOUTS[0], metadata={
        "choices": list(LAYOUTS),
        "help": "title_instruction: the instruction repeats the item's title after the reason line; reason_last: "
                "the reason line comes last and the instruction names no title (code/explainer/prompts.py); "
                "saved with the checkpoint"})
    reference_reasons: str = dataclasses.field(default="recent_genre", metadata={
        "choices": ["recent_genre", "ranker"],
        "help": "template references name the most recent history item sharing a genre (built with the "
                "dataset), or the ranker's top contributor among the items the prompt shows (leave-one-out "
                "on SASRec, built here; docs/faithfulness.md); review references are kept either way"})
    # data
    val_users_fraction: float = 0.1
    max_train_examples: int = dataclasses.field(default=0, metadata={"help": "0: all"})
    max_val_examples: int = dataclasses.field(default=0, metadata={"help": "0: all"})
    # report
    n_samples: int = dataclasses.field(default=3, metadata={"help": "validation explanations logged before/after"})
    max_new_tokens: int = 48
    threads: int = dataclasses.field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})

    def __post_init__(self):
        if self.explanation_max_len >= self.max_seq_len_explainer:
            raise ValueError("explanation_max_len must be below max_seq_len_explainer")


def _extra_args(parser) -> None:
    parser.add_argument("--int8", dest="_int8", action="store_true", help="same as --quant int8 (the seed's flag)")
    parser.add_argument("--4bit", dest="_4bit", action="store_true", help="same as --quant 4bit")
    parser.add_argument("--force", action="store_true", help="redo even if the output is complete")


def parse(argv=None) -> tuple[LoraInitConfig, object]:
    cfg, ns = parse_config(LoraInitConfig, argv, description=__doc__.splitlines()[0],
                           default_yaml="experiments/explainer.yaml", extra_args=_extra_args)
    if ns._int8 and ns._4bit:
        raise InputError("--int8/--4bit", "at most one quantization flag", "both")
    if ns._int8 or ns._4bit:
        cfg = dataclasses.replace(cfg, quant="int8" if ns._int8 else "4bit")
    return cfg, ns


def sft_settings(cfg: LoraInitConfig) -> SFTSettings:
    """The library's settings, field by field from the stage config (which inherits every one of them)."""
    return SFTSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SFTSettings)})


def split_users(n_users: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out validation users (a seeded random ``fraction``) and the rest, as user ids."""
    perm = np.random.default_rng(seed).permutation(np.arange(1, n_users + 1))
    n_val = max(1, int(round(fraction * n_users)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _subsample(xs: list, k: int, seed: int) -> list:
    if k <= 0 or k >= len(xs):
        return xs
    idx = np.sort(np.random.default_rng(seed).choice(len(xs), size=k, replace=False))
    return [xs[i] for i in idx]


def load_ranker_for(cfg: LoraInitConfig, data) -> tuple[object, Path]:
    path = resolve_user_path(cfg.ranker_ckpt) if cfg.ranker_ckpt else checkpoints_dir() / f"sasrec_{cfg.dataset}.pt"
    if not path.exists():
        raise InputError(path, "the ranker checkpoint the bridge reads", "no such file",
                         f"Train it first (python code/ranker/train_sasrec.py --dataset {cfg.dataset}), pass "
                         "--ranker_ckpt, or run without the bridge (--no_bridge).")
    peek = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(peek, dict) and peek.get("dataset") not in (None, cfg.dataset):
        raise InputError(path, f"a ranker trained on {cfg.dataset}", f"one trained on {peek.get('dataset')}",
                         f"Use checkpoints/sasrec_{cfg.dataset}.pt.")
    ranker, _ = load_ranker(path, expect_id_map=data.id_map_sha256)
    return ranker, path


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def sample_explanations(explainer: Explainer, examples, max_new_tokens: int) -> list[dict]:
    """Greedy explanations (deterministic, for the report) for a few validation examples."""
    if not examples:
        return []
    prep = explainer.prepare(examples)
    with torch.no_grad():
        out = generate(explainer.model, explainer.tok, explainer.embed(prep), prep.prompts.mask,
                       max_new_tokens=max_new_tokens, do_sample=False, score=False)
    return [{"user_id": ex.user_id, "item": explainer.catalog[ex.item_id]["title"], "reference": ex.reference,
             "explanation": text} for ex, text in zip(examples, out.texts)]


def ranker_references(explainer: Explainer, ranker, examples: list[Example], data) -> list[Example]:
    """``examples`` with each template reference rewritten to name the ranker's top contributor among the
    history items its prompt shows (``explainer``'s prompt settings decide how many), on the original
    store; review references (human text) are kept."""
    template = set(map(tuple, data.references.loc[data.references["source"] == "template",
                                                  ["user_id", "item_id"]].to_numpy().tolist()))
    rows = [k for k, ex in enumerate(examples) if (ex.user_id, ex.item_id) in template]
    if not rows:
        return examples
    chosen = [examples[k] for k in rows]
    shown = [[int(i) for i in shown_history(ex.history, p.n_history)] for ex, p in zip(chosen, explainer.prompts(chosen))]
    attr = shown_attribution(ranker, [ex.history for ex in chosen], [ex.item_id for ex in chosen], shown)
    tops = top_contributor(attr.items, attr.contributions)
    kind, out = item_kind(data.dataset), list(examples)
    for k, ex, top in zip(rows, chosen, tops.tolist()):
        reason = explainer.catalog[int(top)] if top > 0 else None
        out[k] = ex._replace(reference=ranker_reason_explanation(explainer.catalog[ex.item_id], reason, kind))
    log.info("references: %d template references name the ranker's top contributor (%d name none: no shown "
             "item's deletion lowers the score)", len(rows), int((tops == 0).sum()))
    return out


def run(cfg: LoraInitConfig, force: bool = False) -> dict:
    started = time.time()
    out_dir = resolve_user_path(cfg.out_dir) if cfg.out_dir else checkpoints_dir() / f"lora_init_{cfg.dataset}"
    log_dir = logs_dir() / cfg.dataset / STAGE
    setup_logging(log_dir / "train.log")
    log.info("config: %s", json.dumps(to_dict(cfg)))
    device, dtype = prepare_runtime(seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, threads=cfg.threads)

    data = load_processed(cfg.dataset)
    needs_ranker = not cfg.no_bridge or cfg.reference_reasons == "ranker" or cfg.ranker_reason
    ranker, ranker_path = load_ranker_for(cfg, data) if needs_ranker else (None, None)
    inputs = {"processed": data.folder} | ({"ranker": ranker_path} if ranker_path else {})
    if not force and manifest.is_complete(out_dir, STAGE, to_dict(cfg), inputs):
        log.info("%s is complete for this config and inputs; skipping (use --force to redo)", out_dir)
        return manifest.read(out_dir, STAGE)

    t0 = time.time()
    base, tok, ref = load_base(cfg.model, device=device, dtype=dtype, quant=cfg.quant)
    load_seconds = time.time() - t0
    seed_everything(cfg.seed)  # a first-time GGUF conversion draws random numbers (from_config): re-seed
    model = add_lora(base, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    bridge = None
    if ranker is not None:
        ranker.to(device)
        freeze_ranker(ranker, store_trainable=False)  # E co-adapts only in the shielded trainer
    if ranker is not None and not cfg.no_bridge:  # the ranker may be loaded for the references/reason alone
        bridge = Bridge(BridgeConfig(d_rank=ranker.cfg.hidden, d_llm=base.config.hidden_size,
                                     n_user_tokens=cfg.n_user_tokens, n_item_tokens=cfg.n_item_tokens,
                                     hidden=cfg.bridge_hidden, target_rms=embedding_rms(base))).to(device)
    settings = PromptSettings(kind=item_kind(cfg.dataset), max_prompt_len=cfg.max_seq_len_explainer - cfg.explanation_max_len,
                              max_history=cfg.max_history, n_user_tokens=cfg.n_user_tokens,
                              n_item_tokens=cfg.n_item_tokens,
                              ranker_max_len=ranker.cfg.max_len if ranker is not None else 50,
                              ranker_reason=cfg.ranker_reason, layout=cfg.prompt_layout)
    needs_reader = bridge is not None or cfg.ranker_reason
    explainer = Explainer(model, tok, ItemCatalog(data.items), settings, bridge, ranker if needs_reader else None)
    n_train_params = sum(p.numel() for p in explainer.trainable_parameters())
    log.info("trainable parameters: %.2fM (LoRA%s)", n_train_params / 1e6, " + bridge" if bridge else "")

    train_users, val_users = split_users(data.n_users, cfg.val_users_fraction, cfg.seed)
    train_ex = _subsample(reference_examples(data, train_users), cfg.max_train_examples, cfg.seed)
    val_ex = _subsample(reference_examples(data, val_users), cfg.max_val_examples, cfg.seed + 1)
    if cfg.reference_reasons == "ranker":
        train_ex, val_ex = (ranker_references(explainer, ranker, exs, data) for exs in (train_ex, val_ex))
    if not train_ex or not val_ex:
        raise InputError(data.folder / "references.parquet", "training references for training and held-out users",
                         f"{len(train_ex)} train / {len(val_ex)} validation examples", "Re-run preprocessing.")
    try:
        train_enc = encode(explainer, train_ex, cfg.explanation_max_len)
        val_enc = encode(explainer, val_ex, cfg.explanation_max_len)
    except ValueError as err:  # the prompt budget cannot hold even the recommended item
        raise InputError("--max_seq_len_explainer", "a prompt budget that fits every prompt", str(err),
                         "Raise --max_seq_len_explainer or lower --explanation_max_len.") from None
    log.info("examples: %d train (%d users), %d validation (%d users)", len(train_enc), len(train_users),
             len(val_enc), len(val_users))

    probe = val_ex[:cfg.n_samples]
    samples_before = sample_explanations(explainer, probe, cfg.max_new_tokens)
    sft = sft_settings(cfg)
    with MetricsLog(log_dir / "metrics.jsonl") as metrics:
        res = train_sft(explainer, train_enc, val_enc, sft, log_metrics=metrics.log)
        samples_after = sample_explanations(explainer, probe, cfg.max_new_tokens)
        headline = {
            "val_loss_before": round(res.val_loss_before, 4), "val_loss_after": round(res.best_val_loss, 4),
            "best_step": res.best_step, "steps": res.steps,
            "train_tokens_per_s": round(res.train_tokens / max(res.train_seconds, 1e-9), 1),
            "model_load_s": round(load_seconds, 2), "peak_memory_mb": round(peak_memory_mb(device), 1),
            "trainable_params": n_train_params, "n_train_examples": len(train_enc), "n_val_examples": len(val_enc),
        }
        metrics.log({f"summary/{k}": v for k, v in headline.items()}, res.steps)
    samples = [{"before": b["explanation"], "after": a["explanation"], **{k: b[k] for k in ("user_id", "item", "reference")}}
               for b, a in zip(samples_before, samples_after)]
    atomic.write_json(log_dir / "samples.json", samples)
    for s in samples:
        log.info("sample (user %s, %s)\n  before: %s\n  after:  %s", s["user_id"], s["item"], s["before"], s["after"])

    info = {"dataset": cfg.dataset, "id_map_sha256": data.id_map_sha256, "base_model": ref.as_dict(),
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "targets": cfg.lora_targets}, "quant": cfg.quant,
            "ranker": {"path": str(ranker_path), "sha256": checkpoint_sha256(ranker_path)} if ranker_path else None,
            "explanation_max_len": cfg.explanation_max_len, "max_seq_len_explainer": cfg.max_seq_len_explainer}
    m = save_checkpoint(out_dir, explainer, info, config=to_dict(cfg), inputs=inputs, metrics=headline,
                        seed=cfg.seed, started=started)
    log.info("wrote %s: %s", out_dir, json.dumps(headline))
    return m


def main(argv=None) -> dict:
    cfg, ns = parse(argv)
    return run(cfg, force=ns.force)


if __name__ == "__main__":
    run_cli(main)
