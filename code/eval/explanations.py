"""Explanations for evaluation: which users, which items, and the systems that explain them (no file I/O).

Two sets per evaluated user (DESIGN.md §5):

- ``test_item``: the user's held-out test item, explained from their train+valid history; compared with the
  test reference (text metrics).
- ``slate``: one item drawn uniformly (seeded) from the ranker's top-k slate for the same history; the
  user simulator's click probability on it is the simulated CTR (the quantity PPO optimises).

Systems: ``recrl`` (the PPO run), ``warm_start`` (the SFT explainer PPO started from), ``base`` (the base
LLM, adapters disabled, text prompt without soft tokens) and ``template`` (:func:`template_explanation`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Sequence

import numpy as np
import torch

from ..explainer.generation import generate
from ..explainer.policy import Example, Explainer
from ..explainer.prompts import item_kind, shown_history

SYSTEMS = ("recrl", "warm_start", "base", "template")
SETS = ("test_item", "slate")


def template_explanation(item: dict, kind: str) -> str:
    """The template baseline: the item's title and genres only.

    NOTE: deliberately not the reference template (code/dataset/references.py): on template-reference
    datasets that generator *is* the reference, so its BLEU would be 100 by construction.
    """
    genres = [g.lower() for g in str(item.get("genres") or "").split("|") if g]
    what = f"a {' and '.join(genres[:2])} {kind}" if genres else f"a {kind}"
    return f"We recommend {item['title']}, {what} picked for you from what you chose before."


def pick_users(n_users: int, n: int, seed: int, offset: int = 0) -> list[int]:
    """``n`` user ids (1-based) drawn without replacement with a seeded generator, sorted; all if n ≤ 0.
    ``offset`` skips the first ``offset`` users of the same seeded permutation, so ``offset = n`` gives ``n``
    users disjoint from the default draw (a confirmation set never looked at while choosing configurations)."""
    if offset < 0 or (offset and (n <= 0 or offset + n > n_users)):
        raise ValueError(f"users {offset}..{offset + n} of a permutation of {n_users} users (n must be > 0 "
                         f"and offset + n <= {n_users})")
    if offset == 0 and (n <= 0 or n >= n_users):
        return list(range(1, n_users + 1))
    g = torch.Generator().manual_seed(seed)
    return sorted(int(u) + 1 for u in torch.randperm(n_users, generator=g)[offset:offset + n])


def slate_picks(slates: torch.Tensor, seed: int) -> torch.Tensor:
    """(U, k) slates → (U,) one item per row, uniform over the slate, seeded."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(slates.shape[1], (len(slates),), generator=g)
    return slates[torch.arange(len(slates)), pick]


@dataclasses.dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 40
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16


def _batches(xs: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


@torch.no_grad()
def explain(explainer: Explainer, examples: Sequence[Example], dec: Decoding, seed: int) -> list[str]:
    """Generate one explanation per example; torch's global RNG is seeded with ``seed`` first, so the same
    system, examples and decoding give the same texts."""
    torch.manual_seed(seed)
    texts: list[str] = []
    for chunk in _batches(list(examples), dec.batch_size):
        prep = explainer.prepare(chunk)
        out = generate(explainer.model, explainer.tok, explainer.embed(prep), prep.prompts.mask,
                       max_new_tokens=dec.max_new_tokens, temperature=dec.temperature, top_p=dec.top_p,
                       do_sample=dec.do_sample, score=False)  # texts only
        texts.extend(out.texts)
    return texts


def shown_items(explainer: Explainer, examples: Sequence[Example]) -> list[list[int]]:
    """The history items each example's prompt shows under ``explainer``'s prompt settings (what its
    explanation may cite; the token budget decides how many)."""
    return [[int(i) for i in shown_history(ex.history, p.n_history)]
            for ex, p in zip(examples, explainer.prompts(examples))]


@contextlib.contextmanager
def base_model(explainer: Explainer) -> Iterator[Explainer]:
    """The same base LLM with its LoRA adapters disabled and no bridge: a plain text prompt."""
    plain = Explainer(explainer.model, explainer.tok, explainer.catalog, explainer.settings, bridge=None,
                      ranker=explainer.ranker)  # the ranker only for the prompt's main-reason line, if any
    with explainer.model.disable_adapter():
        yield plain


@contextlib.contextmanager
def item_store(ranker, table: torch.Tensor) -> Iterator[None]:
    """Temporarily give the ranker (which the bridge reads) another item store."""
    weight = ranker.item_emb.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(table.to(weight))
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def template_texts(explainer: Explainer, examples: Sequence[Example], dataset: str) -> list[str]:
    kind = item_kind(dataset)
    return [template_explanation(explainer.catalog[ex.item_id], kind) for ex in examples]


def records(system: str, which: str, examples: Sequence[Example], texts: Sequence[str], sources: Sequence[str],
            slates: dict[int, list[int]], q: np.ndarray, ctr: np.ndarray | None, tox: np.ndarray,
            shown: Sequence[Sequence[int]], extra: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Rows of ``explanations.jsonl`` (the format the audits and aggregation read); ``shown``: the history
    items each prompt showed (:func:`shown_items`); ``extra``: more per-explanation values (n,) by name
    (the indicators ``compare.py`` pairs across systems)."""
    out = []
    for j, (ex, text) in enumerate(zip(examples, texts)):
        out.append({"system": system, "set": which, "user_id": int(ex.user_id), "item_id": int(ex.item_id),
                    "text": text, "reference": ex.reference, "reference_source": sources[j],
                    "history": [int(i) for i in ex.history], "shown": [int(i) for i in shown[j]],
                    "slate": slates[int(ex.user_id)],
                    "q": float(q[j]), "ctr": None if ctr is None else float(ctr[j]), "toxicity": float(tox[j]),
                    **{k: float(v[j]) for k, v in (extra or {}).items()}})
    return out
