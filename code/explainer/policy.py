"""The explainer policy: base LLM (+ LoRA), tokenizer, bridge and the ranker it reads, in one object.

``Explainer.prepare(examples)`` turns (history, item) pairs into a left-padded prompt batch plus the
ranker inputs; ``Explainer.embed(...)`` gives the prompt embeddings with the bridge's soft tokens in
place; ``generation.py`` works on those. The warm start and the PPO trainer both go through here, so a
prompt is built the same way everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .bridge import prompt_embeddings, read_ranker
from .prompts import LAYOUTS, Prompt, PromptBatch, build_prompt, collate_prompts


@dataclasses.dataclass
class PromptSettings:
    kind: str = "item"            # movie | book | game (from the dataset)
    max_prompt_len: int = 208     # max_seq_len_explainer − explanation_max_len
    max_history: int = 10         # most recent items shown as text (fewer if the budget is short)
    n_user_tokens: int = 2        # soft tokens for h_u (0 with --no_bridge)
    n_item_tokens: int = 2        # soft tokens for e_i (0 with --no_bridge)
    ranker_max_len: int = 50      # SASRec history window for h_u
    ranker_reason: bool = False   # a "main reason" line: the shown item the ranker's score rests on most
    layout: str = LAYOUTS[0]      # prompts.LAYOUTS: where the reason line sits, whether the instruction names the item


class Example(NamedTuple):
    """One (history → item → reference) triple; ``history`` oldest first, ``reference`` may be ''."""

    user_id: int
    item_id: int
    history: np.ndarray
    reference: str


class Prepared(NamedTuple):
    """A batch ready for :meth:`Explainer.embed` (B examples).

    prompts:   PromptBatch (ids/mask/soft (B, P))
    histories: (B, L) long — left-padded ranker histories (L = ranker_max_len)
    items:     (B,) long   — recommended item ids
    """

    prompts: PromptBatch
    histories: torch.Tensor
    items: torch.Tensor

    def to(self, device) -> "Prepared":
        return Prepared(PromptBatch(*(t.to(device) for t in self.prompts)), self.histories.to(device),
                        self.items.to(device))


class ItemCatalog:
    """Item rows by id (title, year, genres) for prompt text."""

    def __init__(self, items):
        """``items``: a DataFrame with item_id, title, year, genres — or a mapping id → row dict."""
        if isinstance(items, dict):
            self.rows = {int(k): dict(v) for k, v in items.items()}
        else:
            self.rows = {int(r.item_id): {"title": r.title, "year": r.year, "genres": r.genres}
                         for r in items.itertuples(index=False)}

    def __getitem__(self, item_id: int) -> dict:
        return self.rows[int(item_id)]


def left_pad(seqs: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for b, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-max_len:]
        if len(s):
            out[b, max_len - len(s):] = s
    return torch.from_numpy(out)


class Explainer:
    def __init__(self, model, tok, catalog: ItemCatalog, settings: PromptSettings, bridge=None, ranker=None,
                 store_grad: bool = False):
        if bridge is not None and ranker is None:
            raise ValueError("the bridge reads the ranker: pass the ranker, or bridge=None (--no_bridge)")
        if settings.ranker_reason and ranker is None:
            raise ValueError("the prompt's main-reason line (ranker_reason) reads the ranker: pass the ranker")
        self.model, self.tok, self.catalog, self.settings = model, tok, catalog, settings
        self.bridge, self.ranker, self.store_grad = bridge, ranker, store_grad
        if bridge is None:
            self.settings = dataclasses.replace(settings, n_user_tokens=0, n_item_tokens=0)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def contributions(self, examples: Sequence[Example]) -> list[np.ndarray]:
        """Per example, the ranker's leave-one-out score drop of each history item (aligned with
        ``ex.history``; NaN outside the last ``max_history``), read through the store the ranker holds now
        (the co-adapted one during PPO and in the run's evaluation; docs/faithfulness.md §1)."""
        from shielded_recrl.ranker.attribution import leave_one_out, loo_inputs

        max_len = int(self.ranker.cfg.max_len)
        n = max(1, min(self.settings.max_history, max_len))
        attr = leave_one_out(self.ranker, loo_inputs([np.asarray(ex.history, np.int64) for ex in examples], max_len),
                             torch.tensor([ex.item_id for ex in examples], dtype=torch.long), n)
        out = []
        for ex, c in zip(examples, attr.contributions.numpy()):
            full = np.full(len(ex.history), np.nan, dtype=np.float64)
            k = min(n, len(ex.history))
            if k:
                full[len(full) - k:] = c[n - k:]
            out.append(full)
        return out

    def prompts(self, examples: Sequence[Example]) -> list[Prompt]:
        s = self.settings
        contribs = self.contributions(examples) if s.ranker_reason and examples else [None] * len(examples)
        return [build_prompt(self.tok, [self.catalog[i] for i in ex.history], self.catalog[ex.item_id],
                             s.max_prompt_len, kind=s.kind, n_user_tokens=s.n_user_tokens,
                             n_item_tokens=s.n_item_tokens, max_history=s.max_history, contributions=c,
                             layout=s.layout)
                for ex, c in zip(examples, contribs)]

    def prompt(self, ex: Example) -> Prompt:
        return self.prompts([ex])[0]

    def prepare(self, examples: Sequence[Example], prompts: Sequence[Prompt] | None = None) -> Prepared:
        prompts = prompts if prompts is not None else self.prompts(examples)
        batch = collate_prompts(prompts, self.tok.pad_token_id)
        hist = left_pad([ex.history for ex in examples], self.settings.ranker_max_len)
        items = torch.tensor([ex.item_id for ex in examples], dtype=torch.long)
        return Prepared(batch, hist, items).to(self.device)

    def embed(self, prep: Prepared) -> torch.Tensor:
        """Prompt embeddings (B, P, H), the bridge's soft tokens in their places."""
        soft = None
        if self.bridge is not None:
            h_u, e_i = read_ranker(self.ranker, prep.histories, prep.items, store_grad=self.store_grad)
            soft = self.bridge(h_u.float(), e_i.float())
        return prompt_embeddings(self.model, prep.prompts.ids, prep.prompts.soft, soft)

    def set_store_grad(self, on: bool) -> None:
        """Let gradients reach the shared store ``E`` through the bridge (or stop them). The PPO trainer calls
        this once, with the shield's decision (:attr:`Shield.trains_store`); nothing else decides it."""
        self.store_grad = bool(on)
        if self.ranker is not None:
            self.ranker.item_emb.weight.requires_grad_(self.store_grad)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """LoRA and bridge parameters (the store E is the trainer's business: it goes through the shield)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.bridge is not None:
            params += list(self.bridge.parameters())
        return params


def reference_examples(data, users: Sequence[int] | None = None, split: str = "train") -> list[Example]:
    """(history → item → reference) from a ``Processed`` dataset: the history is everything the user
    chose before the referenced item (chronological ``pos``), whatever its split."""
    refs = data.references[data.references["split"] == split]
    if users is not None:
        refs = refs[refs["user_id"].isin(set(int(u) for u in users))]
    inter = data.interactions.sort_values(["user_id", "pos"])
    by_user = {int(u): (g["pos"].to_numpy(), g["item_id"].to_numpy(np.int64)) for u, g in inter.groupby("user_id")}
    out = []
    for r in refs.sort_values(["user_id", "pos"]).itertuples(index=False):
        pos, items = by_user[int(r.user_id)]
        out.append(Example(int(r.user_id), int(r.item_id), items[pos < r.pos], str(r.text)))
    return out
