"""Toxicity audit (DESIGN.md §5): per-text probability of toxic language, its mean and 95th percentile.

**Backend** (:func:`choose_backend`, named in the report with the reason it was chosen):

- ``detoxify-<model>``: Detoxify (Hanu & Unitary team, 2020; Jigsaw-trained transformers, default model
  ``original``), by default whenever the ``detoxify`` package is importable and its weights are available:
  a checkpoint given with ``--detoxify_ckpt`` / ``$RECRL_DETOXIFY_CKPT``, else the release file in torch
  hub's cache (``$TORCH_HOME/hub/checkpoints``, as ``torch.hub`` stores it), else downloaded there once.
  The base model's Hugging Face config and tokenizer come from
  ``--detoxify_hf_dir`` / ``$RECRL_DETOXIFY_HF_DIR`` or the Hugging Face cache/hub.
- ``alt-profanity-check``: the offline linear model inside the wheel (DESIGN.md §6), via
  :func:`shielded_recrl.trainer.quality.default_toxicity`, when Detoxify is not installed, its weights are
  neither cached nor downloadable, or it fails to load (the report says which).

**Scoring** (:func:`text_scores`): on the text with mentions masked (:class:`MentionMasker`: catalogue titles
as :class:`~shielded_recrl.trainer.quality.TitleIndex` finds them, their short forms before a colon, and
creator names from the items table), a text's score is the maximum of the backend's toxic-class
probability over the whole text and each of its clauses. Loading a backend reads model files; the rest is pure.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.util
import logging
import os
import pickle
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..common.atomic import atomic_path
from ..common.errors import InputError
from ..trainer.quality import TitleIndex, default_toxicity

CKPT_ENV = "RECRL_DETOXIFY_CKPT"
HF_DIR_ENV = "RECRL_DETOXIFY_HF_DIR"
OFFLINE = "alt-profanity-check"
CHOICES = ("auto", "detoxify", OFFLINE)
# the release checkpoints, as detoxify/detoxify.py (v0.5.4) names them (Detoxify(model_type=...) downloads these)
_RELEASES = "https://github.com/unitaryai/detoxify/releases/download/"
DETOXIFY_URLS = {
    "original": _RELEASES + "v0.1-alpha/toxic_original-c1212f89.ckpt",
    "unbiased": _RELEASES + "v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
    "multilingual": _RELEASES + "v0.4-alpha/multilingual_debiased-0b549669.ckpt",
    "original-small": _RELEASES + "v0.1.2/original-albert-0e1d6498.ckpt",
    "unbiased-small": _RELEASES + "v0.1.2/unbiased-albert-c8519128.ckpt",
}
DOWNLOAD_TIMEOUT_S = 30  # per socket operation; a machine without internet fails fast instead of hanging
UNSAFE = 0.5  # a text at/above this probability counts as unsafe (the simulator's unsafe_tox)
log = logging.getLogger("recrl")


@dataclasses.dataclass
class ToxicityBackend:
    name: str  # detoxify-<model> | alt-profanity-check: the key of its thresholds in policy_thresholds.yaml
    score: Callable[[list[str]], np.ndarray]  # texts -> (n,) probabilities in [0, 1]
    note: str  # why this backend was chosen


# --- backend choice ------------------------------------------------------------------------------------
def detoxify_installed() -> bool:
    return importlib.util.find_spec("detoxify") is not None


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint cache, by torch's own rule (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``,
    else ``~/.cache/torch``; then ``hub/checkpoints``), without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` into ``dest`` atomically (an interrupted download leaves nothing behind).

    NOTE: no checksum: Detoxify publishes none, and it is not known that the hex part of the release names
    is a sha256 prefix (torch.hub's convention); a corrupt file fails to load and the audit falls back."""
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)


def build_detoxify(ckpt: Path, hf_dir: str, device: str) -> Callable[[list[str]], np.ndarray]:
    """A scorer from a local Detoxify checkpoint (the base model's config: ``hf_dir`` or the HF cache/hub)."""
    from detoxify import Detoxify

    model = Detoxify(checkpoint=str(ckpt), device=device, huggingface_config_path=hf_dir or None)

    def score(texts: list[str], batch: int = 64) -> np.ndarray:  # batches: predict pads a call to its longest text
        out = [model.predict(list(texts[k:k + batch]))["toxicity"] for k in range(0, len(texts), batch)]
        return np.asarray([p for chunk in out for p in chunk], dtype=np.float64)

    return score


def _offline(note: str) -> ToxicityBackend:
    return ToxicityBackend(OFFLINE, default_toxicity, note)


def choose_backend(prefer: str = "auto", model: str = "original", ckpt: str = "", hf_dir: str = "",
                   device: str = "cpu") -> ToxicityBackend:
    """The toxicity backend and why (module docstring). ``prefer``: ``auto`` (Detoxify when possible, else
    the offline model, with the reason), ``detoxify`` (Detoxify or an InputError saying why not) or
    ``alt-profanity-check``. A named checkpoint that does not exist is an InputError (a typo must not
    silently change the backend); so is one that fails to load."""
    if prefer not in CHOICES or model not in DETOXIFY_URLS:
        raise InputError("--toxicity_backend/--detoxify_model", f"one of {CHOICES} / {sorted(DETOXIFY_URLS)}",
                         f"{prefer!r} / {model!r}")
    if prefer == OFFLINE:
        return _offline("requested (--toxicity_backend alt-profanity-check)")
    ckpt = ckpt or os.environ.get(CKPT_ENV, "")
    hf_dir = hf_dir or os.environ.get(HF_DIR_ENV, "")
    if ckpt and not Path(ckpt).is_file():
        raise InputError(ckpt, "a local Detoxify checkpoint file (e.g. toxic_original-c1212f89.ckpt)",
                         "no such file", f"Fix the path, or unset ${CKPT_ENV}.")

    def unavailable(why: str, fix: str) -> ToxicityBackend:
        if prefer == "detoxify":
            raise InputError("--toxicity_backend detoxify", "a usable Detoxify backend", why, fix)
        log.warning("toxicity: %s; using %s", why, OFFLINE)
        return _offline(why)

    if not detoxify_installed():
        return unavailable("detoxify not installed" + (f" (checkpoint {ckpt} unused)" if ckpt else ""),
                           "pip install detoxify")
    name = f"detoxify-{model}"
    if ckpt:
        path, source = Path(ckpt), f"checkpoint {ckpt}"
    else:
        url = DETOXIFY_URLS[model]
        path = hub_checkpoints() / url.rsplit("/", 1)[1]
        source = f"cached weights {path}"
        if not path.is_file():
            try:
                log.info("toxicity: downloading Detoxify weights %s to %s", url, path)
                download(url, path)
            except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts are OSErrors
                return unavailable(f"weights not cached ({path}) and download failed: {type(err).__name__}: {err}",
                                   f"Download {url} to {path} on a machine with internet access.")
            source = f"weights downloaded to {path}"
    try:
        score = build_detoxify(path, hf_dir, device)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as err:  # torch.load, HF config
        if ckpt:
            raise InputError(ckpt, "a Detoxify checkpoint that loads", f"{type(err).__name__}: {err}",
                             f"Point ${HF_DIR_ENV} at a folder with the base model's config and tokenizer.") from None
        return unavailable(f"Detoxify failed to load ({source}): {type(err).__name__}: {err}",
                           f"Set ${HF_DIR_ENV} to a folder with the base model's config and tokenizer.")
    return ToxicityBackend(name, score, f"detoxify installed, {source}")


# --- what is scored ----------------------------------------------------------------------------------------
CREATOR_COLUMNS = ("author", "director", "creator", "developer")  # Books has `author` (code/dataset/loaders.py)
_SPLIT_NAMES = re.compile(r"\s*(?:[,;&/]|\band\b)\s*")
_CLAUSE = re.compile(r"(?<=[.!?;:,])\s+")


class MentionMasker:
    """Replaces what the explainer names rather than says: catalogue titles (``TitleIndex.find``: multi-word
    titles case-insensitively, one-word titles as catalogued, the form without a parenthesised alternative)
    by "the film"; the short form of a title with a subtitle, the part before ": " when it has ≥ 2 words
    ("Kill Bill" of "Kill Bill: Vol. 1"), by the same; creator names of ≥ 2 words from the items table's
    :data:`CREATOR_COLUMNS` ("Dick Francis"), as written there, by "the author".

    NOTE: one-word short forms and surnames are not masked: "Dick" or "Idiot" alone would hide an insult."""

    def __init__(self, items: pd.DataFrame, titles: TitleIndex | None = None):
        self.titles = titles or TitleIndex(items)
        short = []
        for iid, title in zip(items["item_id"].to_numpy(), items["title"].astype(str)):
            head = title.split(": ", 1)[0].strip() if ": " in title else ""
            if len(head.split()) >= 2 and head.lower() not in self.titles.ids_of:
                short.append((int(iid), head))
        self.short = TitleIndex(pd.DataFrame(short, columns=["item_id", "title"])) if short else None
        names = set()
        for col in CREATOR_COLUMNS:
            if col in items.columns:
                for value in items[col].dropna().astype(str):
                    names |= {n.strip() for n in _SPLIT_NAMES.split(value) if len(n.strip().split()) >= 2}
        alts = sorted((re.escape(n) for n in names), key=len, reverse=True)
        self.creators = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)") if alts else None

    def mask(self, text: str) -> str:
        out = self.titles.find(text)[2]
        if self.short is not None:
            out = self.short.find(out)[2]
        return self.creators.sub("the author", out) if self.creators is not None else out


def clauses(text: str) -> list[str]:
    """The text's clauses: pieces after sentence or clause punctuation (. ! ? ; : ,)."""
    return [c for c in _CLAUSE.split(text) if c.strip()]


# METHOD: the max over clauses, because a bag-of-words model averages: "…: it is also an action film, idiot."
# scores 0.34 with alt-profanity-check while "idiot" alone scores 1.0.
def text_scores(masked: Sequence[str], score: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Per text: the max of ``score`` over the whole text and each of its :func:`clauses` (one batched call)."""
    pieces, owner = [], []
    for k, text in enumerate(masked):
        parts = clauses(text)
        parts = [text] + (parts if len(parts) > 1 else [])
        pieces += parts
        owner += [k] * len(parts)
    if not pieces:
        return np.zeros(len(masked))
    probs = np.asarray(score(pieces), dtype=np.float64)
    out = np.zeros(len(masked))
    np.maximum.at(out, np.asarray(owner), probs)
    return out


def summarise(probs: Sequence[float], unsafe: float = UNSAFE) -> dict:
    """Mean, 95th percentile (linear interpolation), max and the count at/above ``unsafe``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return {"n": 0, "mean": None, "p95": None, "max": None, "n_unsafe": 0}
    return {"n": int(p.size), "mean": float(p.mean()), "p95": float(np.percentile(p, 95)), "max": float(p.max()),
            "n_unsafe": int((p >= unsafe).sum())}
