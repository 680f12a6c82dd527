"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018, arXiv:1808.09781).

Item embedding ``E`` (row 0 = padding) is shared between the input and the output scores
``s(u, i) = h_uᵀ e_i``; it is also the *shared item store* the explainer reads (DESIGN.md §1).

NOTE: departures from the paper, each a common choice in later re-implementations:
- pre-LN blocks (LayerNorm before attention / feed-forward, as the authors' own PyTorch port does)
  plus a final LayerNorm; the paper's equations put LN after the residual.
- padding keys are hidden from attention (``mask_padding_keys``, default on, as the authors' TF code
  does; their PyTorch port lets real positions attend to padding).
- GELU in the point-wise feed-forward (the paper uses ReLU); `activation="relu"` restores it.
- ``scale_item_emb`` (default on, as in the authors' code) multiplies the input item embedding by
  sqrt(d). With our N(0, 0.02) init for items and positions alike, the item's identity starts at
  sqrt(64) = 8x the position signal in the residual stream, and the trained model scores the history's
  own items highly: the last input item sat in the unmasked top 10 for 85% of ML-100K validation users.
  ``experiments/sasrec.yaml`` turns it off for ML-100K (plain ``e_i + p_t``, as RecBole does) together
  with lr 2e-3 instead of 1e-3; that configuration raised ML-100K validation NDCG@10 (mean of seeds 0-3)
  from 0.1166 to 0.1256 (full ranking, seen masked) and from 0.0567 to 0.0691 (unmasked), better in
  every seed (README "Results"; issue #3). The other datasets keep the default, which stays on so that
  checkpoints saved before the flag existed load unchanged.
- the default loss (``sequence_loss`` in ``training.py``) is full-softmax cross-entropy over all items
  rather than the paper's BCE with one sampled negative, which stays available as an option.
The model takes its device from its inputs.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class SASRecHyper:
    """The architecture's hyperparameters: what a config file or flag sets (the ranker's training config
    inherits them). ``n_items`` is not one: it comes from the data (:class:`SASRecConfig`)."""

    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    max_len: int = dataclasses.field(default=50, metadata={"help": "window / history length"})
    activation: str = dataclasses.field(default="gelu", metadata={"choices": ["gelu", "relu"]})
    mask_padding_keys: bool = dataclasses.field(default=True, metadata={
        "help": "hide padding keys in attention (the paper's TF code; off: real positions attend to padding)"})
    scale_item_emb: bool = dataclasses.field(default=True, metadata={
        "help": "input item embedding x sqrt(hidden), as the authors' code (--no-scale_item_emb: off; "
                "see the NOTE in code/ranker/model.py)"})


@dataclasses.dataclass
class SASRecConfig(SASRecHyper):
    """The model's full config: the hyperparameters plus the catalogue size (keyword-only, required)."""

    n_items: int = dataclasses.field(kw_only=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        assert cfg.hidden % cfg.n_heads == 0, "hidden must be divisible by n_heads"
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        # Future-masked (causal) attention: position t sees 1..t only (the paper's "causality").
        # ``attn_mask`` (B, 1, L, L) bool, when given, is already causal and also hides padding keys.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), act, nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.hidden))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x * keep  # padding positions stay zero, as in the authors' code ("timeline mask")


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)  # the shared store E
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    @property
    def item_table(self) -> torch.Tensor:
        """The shared item store ``E`` (n_items + 1, d); row 0 is padding."""
        return self.item_emb.weight

    def forward(self, seqs: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, d) for left-padded item-id sequences (B, L), L ≤ max_len.

        ``item_table`` replaces ``E`` (e.g. a co-adapted store) without touching the module's weights.
        """
        E = self.item_table if item_table is None else item_table
        L = seqs.shape[1]
        keep = (seqs > 0).unsqueeze(-1).to(E.dtype)
        pos = torch.arange(L, device=seqs.device)
        x = F.embedding(seqs, E)
        if self.cfg.scale_item_emb:
            x = x * math.sqrt(self.cfg.hidden)  # sqrt(d) as in the paper's code
        x = x + self.pos_emb(pos)
        x = self.emb_drop(x) * keep
        attn_mask = None
        if self.cfg.mask_padding_keys:
            # causal AND key is a real item; a position always sees itself, so padded rows stay finite
            causal = torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
            attn_mask = (causal & (seqs > 0)[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=seqs.device)
        for block in self.blocks:
            x = block(x, keep, attn_mask)
        return self.ln_f(x)

    def user_state(self, seqs: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """``h_u`` (B, d): the hidden state at the last position of each left-padded history."""
        return self.forward(seqs, item_table)[:, -1]

    def scores(self, h: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """``h_uᵀ e_i`` for every item id (…, n_items + 1); column 0 (padding) is meaningless."""
        E = self.item_table if item_table is None else item_table
        return h @ E.T
