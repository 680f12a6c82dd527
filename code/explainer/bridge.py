"""The bridge: the ranker's view of the user and the item, as soft tokens inside the LLM prompt.

# METHOD: grounding the explainer in the ranker (DESIGN.md §1 "Bridge", "Shared item store").
The ranker's user state ``h_u`` (SASRec's last hidden state over the user's history) and the
recommended item's vector ``e_i`` are both read through the shared item store ``E``; a small trainable
projector (one 2-layer MLP for ``h_u``, one for ``e_i``) maps each into ``k`` vectors of the LLM's
embedding width, which replace the input embeddings of the prompt's soft-token places (prompt tuning
with input-dependent soft tokens: Lester et al., EMNLP 2021, arXiv:2104.08691; the same pattern maps a
recommender's user/item vectors into an LLM in e.g. Li et al., "Personalized Prompt Learning for
Explainable Recommendation", TOIS 2023, arXiv:2202.07371).
Gradient reaches ``E`` only when the caller allows it (``store_grad``): that is the shared parameter
whose updates the trainer projects through the shield; the rest of the ranker is never trained here.

NOTE: each soft token is rescaled to the root-mean-square norm of the LLM's own token embeddings, so the
soft tokens start at the scale the model expects whatever the ranker's scale (SASRec's ``h_u`` is
layer-normed, ``e_i`` is not).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .prompts import SOFT_TEXT


@dataclasses.dataclass
class BridgeConfig:
    d_rank: int            # ranker width (SASRec hidden)
    d_llm: int             # LLM embedding width
    n_user_tokens: int = 2
    n_item_tokens: int = 2
    hidden: int = 256
    target_rms: float = 1.0  # per-token RMS of the soft tokens (set from the LLM's embedding table)


class Bridge(nn.Module):
    def __init__(self, cfg: BridgeConfig):
        super().__init__()
        self.cfg = cfg

        def mlp(k: int) -> nn.Sequential:
            return nn.Sequential(nn.LayerNorm(cfg.d_rank), nn.Linear(cfg.d_rank, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, k * cfg.d_llm))

        self.user = mlp(cfg.n_user_tokens) if cfg.n_user_tokens else None
        self.item = mlp(cfg.n_item_tokens) if cfg.n_item_tokens else None

    @property
    def n_tokens(self) -> int:
        return self.cfg.n_user_tokens + self.cfg.n_item_tokens

    def _tokens(self, net: nn.Sequential, x: torch.Tensor, k: int) -> torch.Tensor:
        y = net(x).view(x.shape[0], k, self.cfg.d_llm)
        rms = y.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return y / rms * self.cfg.target_rms

    def forward(self, h_u: torch.Tensor, e_i: torch.Tensor) -> torch.Tensor:
        """(B, d_rank), (B, d_rank) → soft tokens (B, n_user_tokens + n_item_tokens, d_llm), user first."""
        parts = []
        if self.user is not None:
            parts.append(self._tokens(self.user, h_u, self.cfg.n_user_tokens))
        if self.item is not None:
            parts.append(self._tokens(self.item, e_i, self.cfg.n_item_tokens))
        return torch.cat(parts, dim=1)


def embedding_rms(model) -> float:
    """RMS norm per row of the LLM's input embedding table (the scale soft tokens are given)."""
    w = model.get_input_embeddings().weight.detach().float()
    return float(w.pow(2).mean(-1).sqrt().mean())


def freeze_ranker(ranker: nn.Module, store_trainable: bool = False) -> None:
    """The production ranker is never trained by the explainer; only its store ``E`` may co-adapt."""
    ranker.eval()
    for p in ranker.parameters():
        p.requires_grad_(False)
    ranker.item_emb.weight.requires_grad_(store_trainable)


def read_ranker(ranker, histories: torch.Tensor, items: torch.Tensor, store_grad: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_u`` (B, d) and ``e_i`` (B, d) read through the shared store ``E``.

    With ``store_grad=False`` ``E`` is detached, so no gradient reaches it whatever its requires_grad.
    ``histories``: (B, L) left-padded item ids; ``items``: (B,) the recommended item ids.
    """
    E = ranker.item_table if store_grad else ranker.item_table.detach()
    h_u = ranker.user_state(histories, item_table=E)
    return h_u, E[items]


def prompt_embeddings(model, input_ids: torch.Tensor, soft: torch.Tensor, soft_tokens: torch.Tensor | None
                      ) -> torch.Tensor:
    """Input embeddings (B, P, H) of a prompt batch with the soft-token places filled from the bridge.

    ``soft``: (B, P) SOFT_* per position; every row has exactly ``soft_tokens.shape[1]`` soft places, in
    the order the bridge emits them (user tokens, then item tokens).
    """
    emb = model.get_input_embeddings()(input_ids)
    places = soft != SOFT_TEXT
    if soft_tokens is None:
        if places.any():
            raise ValueError("the prompts have soft-token places but no bridge output was given")
        return emb
    n = int(places.sum(1).max()) if places.numel() else 0
    if not bool((places.sum(1) == soft_tokens.shape[1]).all()) or n != soft_tokens.shape[1]:
        raise ValueError(f"prompts have {places.sum(1).tolist()} soft places per row; the bridge gives "
                         f"{soft_tokens.shape[1]}: build prompts with the bridge's n_user_tokens/n_item_tokens")
    return emb.masked_scatter(places.unsqueeze(-1), soft_tokens.to(emb.dtype))
