"""The explainer checkpoint folder (``checkpoints/lora_init_<D>/``), written atomically.

::

    adapter/            peft save_pretrained: adapter_config.json + adapter_model.safetensors
    bridge.safetensors  bridge weights (absent with --no_bridge)
    tokenizer/          the tokenizer and its chat template (what the prompts were built with)
    explainer.json      format, base model reference (name/kind/source + sha256), bridge and prompt
                        settings, LoRA settings, ranker checkpoint path + sha256, dataset + id map
    manifest.json       the stage manifest (inputs/outputs with sha256, config, metrics)

Never the base model's weights: the base is reloaded from its reference and checked against its sha256.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ..common import atomic, manifest
from ..common.errors import InputError
from .bridge import Bridge, BridgeConfig, freeze_ranker
from .loading import load_base
from .policy import Explainer, ItemCatalog, PromptSettings
from .prompts import LAYOUTS

FORMAT = "shielded_recrl.explainer/1"
INFO = "explainer.json"


def save_explainer(folder: str | os.PathLike, explainer: Explainer, info: dict) -> dict:
    """Write adapter, bridge, tokenizer and ``explainer.json`` into ``folder`` (the caller's temporary
    folder inside ``atomic_dir``). ``info`` adds the base model reference, ranker, dataset, LoRA config."""
    from safetensors.torch import save_file

    folder = Path(folder)
    explainer.model.save_pretrained(folder / "adapter", safe_serialization=True)
    explainer.tok.save_pretrained(folder / "tokenizer")
    if explainer.bridge is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in explainer.bridge.state_dict().items()},
                  folder / "bridge.safetensors")
    record = {"format": FORMAT, **info, "prompt": dataclasses.asdict(explainer.settings),
              "bridge": dataclasses.asdict(explainer.bridge.cfg) if explainer.bridge is not None else None}
    (folder / INFO).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def save_checkpoint(out_dir: str | os.PathLike, explainer: Explainer, info: dict, *, config: dict,
                    inputs: dict, metrics: dict, seed: int, started: float, stage: str = "lora_init") -> dict:
    """The whole folder, atomically: files + ``manifest.json`` (outputs recorded at their final place)."""
    out_dir = Path(out_dir)
    with atomic.atomic_dir(out_dir) as tmp:
        save_explainer(tmp, explainer, info)
        outputs = {"adapter": tmp / "adapter", "tokenizer": tmp / "tokenizer", "explainer": tmp / INFO}
        if explainer.bridge is not None:
            outputs["bridge"] = tmp / "bridge.safetensors"
        m = manifest.build(stage, config=config, inputs=inputs, outputs=outputs, seed=seed, metrics=metrics,
                           started=started, extra={"base_model": info.get("base_model")})
        for rec in m["outputs"].values():  # the temporary folder is renamed to out_dir on success
            rec["path"] = rec["path"].replace(tmp.name, out_dir.name, 1)
        manifest.write(tmp, m)
    return m


def read_info(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / INFO
    if not path.exists():
        raise InputError(path, "an explainer checkpoint (explainer.json)", "no such file",
                         "Run the warm start: bash code/explainer/run_lora_init.sh")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise InputError(path, f"format {FORMAT!r}", repr(info.get("format")), "Re-run the warm start.")
    return info


def prompt_settings(info: dict) -> PromptSettings:
    """The prompt a checkpoint was trained on (``explainer.json``'s ``prompt``). Checkpoints from before
    the layout was recorded were all trained on the ``title_instruction`` layout."""
    return PromptSettings(**{"layout": LAYOUTS[0], **info["prompt"]})


def load_explainer(folder: str | os.PathLike, *, items, ranker=None, device="cpu", dtype=torch.float32,
                   quant: str = "none", trainable: bool = False, expect_id_map: str | None = None,
                   ranker_sha256: str | None = None) -> tuple[Explainer, dict]:
    """Rebuild the explainer from a checkpoint folder → (Explainer, explainer.json).

    ``items``: the dataset's items DataFrame (prompt text). ``ranker``: the SASRec the bridge reads (needed
    unless the checkpoint has no bridge); ``ranker_sha256`` (of its checkpoint file) must match the one the
    warm start used, and ``expect_id_map`` the processed data's id map. ``trainable``: LoRA and bridge
    weights require grad (PPO continues from them). The store ``E`` is loaded frozen; whether it receives
    gradients is the shield's decision (:meth:`Explainer.set_store_grad`, called by the PPO trainer).
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_info(folder)
    m = manifest.read(folder, "lora_init")
    manifest.verify_outputs(folder, m)
    if expect_id_map is not None and info.get("id_map_sha256") != expect_id_map:
        raise InputError(folder / INFO, f"an explainer warm-started on data with id map {expect_id_map}",
                         f"id map {info.get('id_map_sha256')} (dataset {info.get('dataset')})",
                         "Re-run the warm start on this dataset.")
    if ranker_sha256 is not None and info.get("ranker", {}).get("sha256") not in (None, ranker_sha256):
        raise InputError(folder / INFO, f"a warm start with ranker sha256 {ranker_sha256[:12]}…",
                         f"ranker sha256 {str(info['ranker']['sha256'])[:12]}…",
                         "The ranker changed since the warm start; re-run it (run_lora_init.sh).")
    base = info["base_model"]
    model, _, ref = load_base(base["name"], device=device, dtype=dtype, quant=quant)
    if base.get("sha256") and ref.sha256 and ref.sha256 != base["sha256"]:
        raise InputError(ref.source, f"the base model the warm start used (sha256 {base['sha256'][:12]}…)",
                         f"sha256 {ref.sha256[:12]}…", "Install the same model file, or re-run the warm start.")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    model = PeftModel.from_pretrained(model, folder / "adapter", is_trainable=trainable)
    bridge = None
    if info.get("bridge") is not None:
        if ranker is None:
            raise InputError(folder / INFO, "a ranker for the bridge (the checkpoint has one)", "none given",
                             "Pass --ranker_ckpt (the checkpoint the warm start used).")
        bridge = Bridge(BridgeConfig(**info["bridge"]))
        bridge.load_state_dict(load_file(folder / "bridge.safetensors"))
        bridge.to(device)
        bridge.requires_grad_(trainable)
        freeze_ranker(ranker)
    settings = prompt_settings(info)
    if settings.ranker_reason:
        if ranker is None:
            raise InputError(folder / INFO, "a ranker for the prompt's main-reason line (ranker_reason is on)",
                             "none given", "Pass --ranker_ckpt (the checkpoint the warm start used).")
        freeze_ranker(ranker)
    model.eval()
    return Explainer(model, tok, ItemCatalog(items), settings, bridge, ranker), info
