"""Explainer prompts: the model's own chat template, length-bounded, with places for soft tokens.

A prompt is a system message and one user turn::

    Items you chose recently (oldest first):
    - Heat (1995; Action, Crime, Thriller)
    - ...
    Recommended movie: Kolya (1996; Comedy)
    The recommender's main reason: Heat
    What the recommender knows about you: ⟨u⟩⟨u⟩ and about this movie: ⟨i⟩⟨i⟩
    In one or two sentences, tell me why I might enjoy Kolya.

``⟨u⟩``/``⟨i⟩`` are soft-token places: their token ids are placeholders whose input embeddings the
bridge overwrites (see ``bridge.py``). Without the bridge the whole "What the recommender knows" line
is left out. The "main reason" line is there only when the caller passes the ranker's leave-one-out
contribution of each history item (``contributions``; ``PromptSettings.ranker_reason``): it names the
shown item whose deletion lowers the recommended item's score most (docs/faithfulness.md), and is left
out when no shown item's deletion lowers it. When the prompt exceeds its token budget the oldest history
items are dropped first (under ``reason_last``, a last history item that does not fit with its year and
genres is shown by its title alone); the recommended item, the instruction and the soft tokens are always
kept.

Two layouts (``PromptSettings.layout``, saved with every explainer checkpoint):

- ``title_instruction`` (above; every checkpoint before the layout was recorded): the reason line follows
  the recommended item and the instruction repeats the item's title, so the title nearest the answer is
  the recommended item's own.
- ``reason_last``: the reason line comes last, just before an instruction that names no title ("tell me
  why I might enjoy this movie."), so the title nearest the answer is the reason's, and the prompt is
  shorter by the repeated title (room for more history under the same budget).

No I/O here; ``tok`` is any Hugging Face tokenizer with a chat template.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

import torch

USER_MARK, ITEM_MARK = "\x00U\x00", "\x00I\x00"  # never produced by real text; split out before tokenizing
SOFT_TEXT, SOFT_USER, SOFT_ITEM = 0, 1, 2  # values of Prompt.soft

SYSTEM = "You explain recommendations: in one or two friendly sentences, tell the user why the {kind} suits them."
KIND = {"ml100k": "movie", "ml25m": "movie", "books": "book", "steam": "game"}
LAYOUTS = ("title_instruction", "reason_last")  # the first: the default, and every checkpoint from before it was recorded


def item_kind(dataset: str) -> str:
    return KIND.get(dataset, "item")


def _year(year) -> str:
    try:
        y = float(year)
    except (TypeError, ValueError):
        return str(year or "")
    return "" if y != y or y == 0 else str(int(y))  # NaN / 0 = unknown


def describe_item(item: dict) -> str:
    """``Title (year; Genre, Genre)`` from a row with ``title``, ``year`` (may be empty), ``genres`` ('|')."""
    attrs = [a for a in str(item.get("genres") or "").split("|") if a][:4]
    inner = "; ".join(p for p in (_year(item.get("year")), ", ".join(attrs)) if p)
    return f"{item['title']} ({inner})" if inner else str(item["title"])


class Prompt(NamedTuple):
    """One tokenized prompt (P tokens, generation prompt included).

    ids:       list[int] (P,) — token ids; soft-token places hold ``tok.pad_token_id``
    soft:      list[int] (P,) — SOFT_TEXT / SOFT_USER / SOFT_ITEM per position
    n_history: int — history items kept after truncation
    """

    ids: list[int]
    soft: list[int]
    n_history: int


def shown_history(history: Sequence, n_history: int) -> list:
    """The history entries a prompt showed: the last ``n_history`` of ``history`` (oldest first), as
    :func:`build_prompt` keeps them (``Prompt.n_history``). ``n_history == 0`` shows nothing (not
    ``history[-0:]``, which is all of it). What the explanation may cite (DESIGN.md §4.3)."""
    if n_history < 0 or n_history > len(history):
        raise ValueError(f"n_history must be in [0, {len(history)}] for a history of {len(history)} items; "
                         f"found {n_history}")
    return list(history[len(history) - n_history:])


def top_shown(contributions: Sequence[float] | None, n_shown: int) -> int | None:
    """Index (into ``contributions``) of the largest positive contribution among the last ``n_shown``
    entries, ties to the more recent item (as ``ranker.attribution.rank_contributors``); None when none of
    them is positive (NaN = no attribution). ``contributions`` is aligned with the history, oldest first."""
    if contributions is None or n_shown <= 0:
        return None
    best = None
    for j in range(len(contributions) - 1, len(contributions) - 1 - min(n_shown, len(contributions)), -1):
        c = float(contributions[j])
        if c == c and c > 0 and (best is None or c > float(contributions[best])):
            best = j
    return best


def user_message(history: Sequence[dict], item: dict, kind: str, n_user_tokens: int, n_item_tokens: int,
                 reason: dict | None = None, layout: str = LAYOUTS[0], bare_titles: bool = False) -> str:
    """The user turn. ``bare_titles``: history lines show titles only (no year or genres)."""
    if layout not in LAYOUTS:
        raise ValueError(f"prompt layout must be one of {LAYOUTS}; found {layout!r}")
    lines = []
    if history:
        lines.append("Items you chose recently (oldest first):")
        lines += [f"- {h['title'] if bare_titles else describe_item(h)}" for h in history]
    lines.append(f"Recommended {kind}: {describe_item(item)}")
    reason_line = [f"The recommender's main reason: {reason['title']}"] if reason is not None else []
    soft_line = [f"What the recommender knows about you: {USER_MARK * n_user_tokens} "
                 f"and about this {kind}: {ITEM_MARK * n_item_tokens}"] if n_user_tokens or n_item_tokens else []
    if layout == "title_instruction":
        lines += reason_line + soft_line + [f"In one or two sentences, tell me why I might enjoy {item['title']}."]
    else:
        lines += soft_line + reason_line + [f"In one or two sentences, tell me why I might enjoy this {kind}."]
    return "\n".join(lines)


def _tokenize(tok, text: str) -> tuple[list[int], list[int]]:
    ids, soft = [], []
    for piece in re.split(f"({USER_MARK}|{ITEM_MARK})", text):
        if piece == USER_MARK or piece == ITEM_MARK:
            ids.append(tok.pad_token_id)
            soft.append(SOFT_USER if piece == USER_MARK else SOFT_ITEM)
        elif piece:
            # the rendered template already holds its special tokens as text; add none of our own
            part = tok(piece, add_special_tokens=False)["input_ids"]
            ids += part
            soft += [SOFT_TEXT] * len(part)
    return ids, soft


def build_prompt(tok, history: Sequence[dict], item: dict, max_len: int, *, kind: str = "item",
                 n_user_tokens: int = 0, n_item_tokens: int = 0, max_history: int = 10,
                 contributions: Sequence[float] | None = None, layout: str = LAYOUTS[0]) -> Prompt:
    """Chat-templated prompt of at most ``max_len`` tokens; ``history`` is oldest first.

    ``contributions``: the ranker's leave-one-out score drop of each history item (aligned with
    ``history``; NaN where not attributed), or None for no "main reason" line. The reason is chosen among
    the items the prompt finally shows, so truncation never leaves it naming an item that is not listed.
    Under the ``reason_last`` layout, a single history item that does not fit with its year and genres is
    shown by its title alone before the prompt falls back to no history.
    """
    if contributions is not None and len(contributions) != len(history):
        raise ValueError(f"one contribution per history item expected: {len(history)} items, "
                         f"{len(contributions)} contributions")
    system = SYSTEM.format(kind=kind)
    keep, bare = min(len(history), max_history), False
    while True:
        hist = list(history[len(history) - keep:]) if keep else []
        top = top_shown(contributions, keep)
        reason = history[top] if top is not None else None
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": user_message(hist, item, kind, n_user_tokens, n_item_tokens,
                                                             reason, layout, bare)}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids, soft = _tokenize(tok, text)
        if len(ids) <= max_len:
            return Prompt(ids, soft, keep)
        if keep == 0:
            raise ValueError(f"max_seq_len_explainer leaves {max_len} prompt tokens, but the prompt without any "
                             f"history already needs {len(ids)}: raise max_seq_len_explainer or lower "
                             "explanation_max_len")
        if keep == 1 and layout == "reason_last" and not bare:
            bare = True  # the last item by its title alone, rather than no history at all
            continue
        keep -= 1  # drop the oldest history item first


class PromptBatch(NamedTuple):
    """Left-padded prompts (B prompts, P = longest).

    ids:  (B, P) long — pad on the left
    mask: (B, P) long — 1 on real (text or soft) tokens
    soft: (B, P) long — SOFT_* per position (SOFT_TEXT on padding)
    """

    ids: torch.Tensor
    mask: torch.Tensor
    soft: torch.Tensor


def collate_prompts(prompts: Sequence[Prompt], pad_id: int) -> PromptBatch:
    P = max(len(p.ids) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    soft = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        n = len(p.ids)
        ids[b, P - n:] = torch.tensor(p.ids)
        mask[b, P - n:] = 1
        soft[b, P - n:] = torch.tensor(p.soft)
    return PromptBatch(ids, mask, soft)


def collate_responses(responses: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids (B, T) and their mask (B, T) bool."""
    T = max(1, max(len(r) for r in responses))
    ids = torch.full((len(responses), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), T), dtype=torch.bool)
    for b, r in enumerate(responses):
        ids[b, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[b, :len(r)] = True
    return ids, mask
