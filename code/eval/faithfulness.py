"""Faithfulness of explanations to the ranker (DESIGN.md §4.4, §5). Pure: no I/O.

An explanation is faithful when the history items it names are the ranker's reasons: the shown
history items whose deletion lowers the item's score most (``ranker/attribution.py``, leave-one-out
on the real SASRec). "Faithful" in the sense of Jacovi & Goldberg (ACL 2020): the stated reason
matches the model's actual reasoning, not merely a plausible one. Definitions (``docs/faithfulness.md``):

- **named**: the distinct *shown* history items whose titles the text names (``TitleIndex``; a title
  shared by several items counts for the shown ones among them). The recommended item itself, history
  items the prompt did not show and invented titles are not reasons here (grounding in ``q`` judges those).
- **top-k contributors**: shown items with a positive score drop whose drop is at least the k-th
  largest drop (ties at the boundary all count). An item whose deletion does not lower the score is
  not a reason, so a pair can have fewer than k contributors, or none.
- **faithfulness@k** (hit): 1 if any named item is a top-k contributor, else 0. An explanation that
  names no shown title scores 0 and is also counted in ``named_none``; ``hit_given_named`` is the rate
  among the others, and ``chance`` is the hit rate of naming as many shown titles drawn at random.
- **graded score** ∈ [−1, 1] (a reward component): the mean, over named items ``j``, of the drop
  relative to the top contributor's, ``clip(c_j / c_max, −1, 1)``; 0 when nothing shown is named.
"""

from __future__ import annotations

from math import comb
from typing import NamedTuple, Sequence

import numpy as np

Ids = Sequence[set[int]] | Sequence[frozenset[int]]


def _arrays(items, contributions) -> tuple[np.ndarray, np.ndarray]:
    """(B, C) int64 items and float64 contributions (NaN where the slot is not a valid shown item)."""
    it = np.asarray(items, dtype=np.int64)
    c = np.asarray(contributions, dtype=np.float64)
    if it.ndim != 2 or it.shape != c.shape:
        raise ValueError(f"items and contributions must both be (B, C); found {it.shape} and {c.shape}")
    return it, np.where(it > 0, c, np.nan)


# --- what an explanation names ---------------------------------------------------------------------------
def named_shown_items(titles, texts: Sequence[str], shown: Sequence[Sequence[int]]) -> list[set[int]]:
    """For each text, the shown history item ids whose titles it names.

    ``titles``: a :class:`~shielded_recrl.trainer.quality.TitleIndex` (anything with
    ``named_spans(text) -> [(start, end, ids)]``); ``shown``: per text the item ids the prompt listed
    (e.g. a row of ``Attribution.items``; 0 entries are ignored).
    """
    if len(texts) != len(shown):
        raise ValueError(f"one shown-item list per text expected; found {len(texts)} texts, {len(shown)} lists")
    out = []
    for text, row in zip(texts, shown):
        allowed = {int(i) for i in row if int(i) > 0}
        named: set[int] = set()
        for _, _, ids in titles.named_spans(str(text)):
            named |= set(ids) & allowed
        out.append(named)
    return out


def names_latest(named: Sequence[set[int]], shown: Sequence[Sequence[int]]) -> np.ndarray:
    """Per text, whether it names the most recent shown item (``shown`` oldest first, as the prompt lists
    them; 0 entries are padding): the positional reason, the ranker's top contributor in about half the
    pairs (docs/faithfulness.md §4). (n,) bool"""
    if len(named) != len(shown):
        raise ValueError(f"one shown-item list per text expected; found {len(named)} and {len(shown)}")
    out = np.zeros(len(named), dtype=bool)
    for n, (ids, row) in enumerate(zip(named, shown)):
        row = [int(i) for i in row if int(i) > 0]
        out[n] = bool(row) and row[-1] in ids
    return out


# --- the ranker's side ---------------------------------------------------------------------------------
def top_contributors(items, contributions, k: int) -> list[set[int]]:
    """Per pair, the shown item ids with a positive drop at least the k-th largest (ties included)."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1; found {k}")
    it, c = _arrays(items, contributions)
    out = []
    for row_i, row_c in zip(it, c):
        pos = np.where(row_c > 0, row_c, np.nan)  # NaN compares False: invalid slots never qualify
        vals = np.sort(pos[~np.isnan(pos)])[::-1]
        if len(vals) == 0:
            out.append(set())
            continue
        thr = vals[min(k, len(vals)) - 1]
        out.append({int(i) for i, v in zip(row_i, pos) if v >= thr})
    return out


def top_contributor(items, contributions) -> np.ndarray:
    """(B,) the item id of each pair's largest positive drop (ties → the more recent, i.e. later column),
    0 when no shown item's deletion lowers the score. For template references that name the ranker's reason."""
    it, c = _arrays(items, contributions)
    rev = np.where(np.isnan(c) | (c <= 0), -np.inf, c)[:, ::-1]  # most recent first: argmax takes the first max
    j = it.shape[1] - 1 - rev.argmax(1)
    best = it[np.arange(len(it)), j]
    return np.where(np.isfinite(rev.max(1, initial=-np.inf)), best, 0)


# --- faithfulness@k -------------------------------------------------------------------------------------
class Faithfulness(NamedTuple):
    """faithfulness@k over n explanations; per-explanation arrays are (n,).

    hit:             (n,) float — 1 if a named shown item is a top-k contributor, else 0 (names none → 0)
    named_none:      (n,) bool  — the text names no shown history title
    chance:          (n,) float — P(hit) when naming as many shown titles uniformly at random (0 if none)
    mean:            float — faithfulness@k = mean(hit)
    named_none_rate: float — share of explanations naming no shown title
    hit_given_named: float — mean(hit) among those naming at least one (NaN if there are none)
    chance_mean:     float — mean(chance): the level a history-naming but ranker-blind text would reach
    """

    hit: np.ndarray
    named_none: np.ndarray
    chance: np.ndarray
    mean: float
    named_none_rate: float
    hit_given_named: float
    chance_mean: float


def faithfulness_at_k(named: Ids, items, contributions, k: int = 1) -> Faithfulness:
    """faithfulness@k of explanations naming ``named`` (per explanation, shown item ids; see
    :func:`named_shown_items`) for pairs with leave-one-out ``contributions`` over shown ``items`` (B, C)."""
    it, c = _arrays(items, contributions)
    if len(named) != len(it):
        raise ValueError(f"one named-id set per pair expected; found {len(named)} sets for {len(it)} pairs")
    tops = top_contributors(it, c, k)
    hit = np.zeros(len(it))
    none = np.zeros(len(it), dtype=bool)
    chance = np.zeros(len(it))
    for b, (ids, top, row) in enumerate(zip(named, tops, it)):
        shown = {int(i) for i in row if i > 0}
        ids = {int(i) for i in ids} & shown
        none[b] = not ids
        hit[b] = float(bool(ids & top))
        m, n, t = len(ids), len(shown), len(top)
        chance[b] = 1.0 - comb(n - t, m) / comb(n, m) if m else 0.0  # ≥ 1 of m random picks in the top set
    some = ~none
    return Faithfulness(hit, none, chance, float(hit.mean()) if len(hit) else float("nan"),
                        float(none.mean()) if len(none) else float("nan"),
                        float(hit[some].mean()) if some.any() else float("nan"),
                        float(chance.mean()) if len(chance) else float("nan"))


def faithfulness_score(named: Ids, items, contributions) -> np.ndarray:
    """(B,) graded faithfulness in [−1, 1], the reward component.

    ``score = mean_{j ∈ named} clip(c_j / c_max, −1, 1)`` with ``c_max`` the pair's largest drop among
    shown items; 0 when nothing shown is named. When no shown item has a positive drop (``c_max ≤ 0``)
    a named item scores −1 if its deletion *raises* the score, else 0.
    Why: naming the top contributor alone earns 1 and a near-tie earns nearly as much (the drop, not its
    rank, is what the ranker used); the mean (not the max) makes listing every shown title, the cheap way
    to always include the top one, earn only the average relative drop; naming an item that works
    against the recommendation is worse than naming nothing.
    """
    it, c = _arrays(items, contributions)
    if len(named) != len(it):
        raise ValueError(f"one named-id set per pair expected; found {len(named)} sets for {len(it)} pairs")
    out = np.zeros(len(it))
    for b, ids in enumerate(named):
        drop = {int(i): float(v) for i, v in zip(it[b], c[b]) if i > 0}
        ids = [int(i) for i in ids if int(i) in drop]
        if not ids:
            continue
        c_max = max(drop.values())
        credit = [float(np.clip(drop[j] / c_max, -1.0, 1.0)) if c_max > 0 else (-1.0 if drop[j] < 0 else 0.0)
                  for j in ids]
        out[b] = float(np.mean(credit))
    return out
