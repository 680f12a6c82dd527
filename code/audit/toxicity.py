"""Toxicity audit (DESIGN.md §5): per-text probability of toxic language, its mean and 95th percentile.

Two backends, chosen once per audit and named in the report:

- ``detoxify``: Detoxify (Hanu & Unitary team, 2020; Jigsaw-trained transformers), used only when the
  package is importable *and* a local checkpoint is given (``--detoxify_ckpt`` or ``RECRL_DETOXIFY_CKPT``,
  plus ``--detoxify_hf_dir`` / ``RECRL_DETOXIFY_HF_DIR``: the base model's config and tokenizer files).
  Hugging Face downloads are switched off while it loads: this never fetches weights.
- ``alt-profanity-check``: the offline linear model shipped inside the wheel (the default; DESIGN.md §6),
  via :func:`shielded_recrl.trainer.quality.default_toxicity`.

Scores are the backend's probability of the "toxic" class on the text with catalogue titles masked
(done by the caller: titles such as "Liar Liar" or "Faster Pussycat! Kill! Kill!" are not the explainer's
language). Loading a backend reads model files; everything else here is pure.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..common.errors import InputError
from ..trainer.quality import default_toxicity

CKPT_ENV = "RECRL_DETOXIFY_CKPT"
HF_DIR_ENV = "RECRL_DETOXIFY_HF_DIR"
log = logging.getLogger("recrl")


@dataclasses.dataclass
class ToxicityBackend:
    name: str  # detoxify | alt-profanity-check
    score: Callable[[list[str]], np.ndarray]  # texts -> (n,) probabilities in [0, 1]
    note: str  # why this backend was chosen


def load_backend(detoxify_ckpt: str = "", detoxify_hf_dir: str = "", device: str = "cpu") -> ToxicityBackend:
    """Detoxify from local files when a checkpoint is named (argument, else ``$RECRL_DETOXIFY_CKPT``) and the
    package is importable; otherwise alt-profanity-check. A named checkpoint that does not exist is an
    :class:`InputError` (a typo must not silently change the backend)."""
    ckpt = detoxify_ckpt or os.environ.get(CKPT_ENV, "")
    hf_dir = detoxify_hf_dir or os.environ.get(HF_DIR_ENV, "")
    if not ckpt:
        return ToxicityBackend("alt-profanity-check", default_toxicity,
                               f"no Detoxify checkpoint given (--detoxify_ckpt or ${CKPT_ENV})")
    if not Path(ckpt).is_file():
        raise InputError(ckpt, "a local Detoxify checkpoint file (e.g. toxic_original-c1212f89.ckpt)",
                         "no such file", f"Fix the path, or unset ${CKPT_ENV} to use alt-profanity-check.")
    if importlib.util.find_spec("detoxify") is None:
        log.warning("Detoxify checkpoint %s given but the detoxify package is not installed; "
                    "falling back to alt-profanity-check", ckpt)
        return ToxicityBackend("alt-profanity-check", default_toxicity,
                               f"detoxify not importable (checkpoint {ckpt} unused)")
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download: the base model's config must be local too
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from detoxify import Detoxify

    try:
        model = Detoxify(checkpoint=ckpt, device=device, huggingface_config_path=hf_dir or None)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(ckpt, "a Detoxify checkpoint loadable offline", f"{type(err).__name__}: {err}",
                         f"Point ${HF_DIR_ENV} at a folder with the base model's config and tokenizer.") from None

    def score(texts: list[str]) -> np.ndarray:
        return np.asarray(model.predict(list(texts))["toxicity"], dtype=np.float64) if texts else np.zeros(0)

    return ToxicityBackend("detoxify", score, f"Detoxify checkpoint {ckpt}")


def summarise(probs: Sequence[float], unsafe: float = 0.5) -> dict:
    """Mean, 95th percentile (linear interpolation), max and the count at/above ``unsafe``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return {"n": 0, "mean": None, "p95": None, "max": None, "n_unsafe": 0}
    return {"n": int(p.size), "mean": float(p.mean()), "p95": float(np.percentile(p, 95)), "max": float(p.max()),
            "n_unsafe": int((p >= unsafe).sum())}
