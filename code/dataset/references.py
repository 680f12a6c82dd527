"""Reference explanations (DESIGN.md §3). No I/O here.

- ``source=review``: a sentence of the user's own review of the item (Books).
- ``source=template``: built from metadata — the item's attributes and what it shares with the user's
  history. Template references are never presented as human text; metrics are reported per source.
"""

from __future__ import annotations

import re

import pandas as pd

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z']+")


def review_sentence(review: str, min_words: int = 5, max_words: int = 40) -> str | None:
    """The first sentence of a review that reads as an opinion of reasonable length, else None."""
    if not isinstance(review, str):
        return None
    for sent in _SENT_SPLIT.split(review.strip()):
        n = len(_WORD.findall(sent))
        if min_words <= n <= max_words:
            return sent.strip()
    return None


def _attrs(row) -> list[str]:
    g = row.get("genres") if hasattr(row, "get") else None
    return [a for a in str(g or "").split("|") if a]


def template_explanation(item: dict, history: list[dict], kind: str = "item") -> str:
    """One or two sentences from metadata.

    ``item``/``history`` entries are dicts with ``title``, ``year`` (may be empty) and ``genres``
    ('|'-joined). The history is most-recent-last; the most recent history item sharing an attribute
    with the target is named, so the explanation is grounded in what the user did.
    """
    attrs = _attrs(item)
    year = f" ({item['year']})" if item.get("year") not in (None, "", 0) else ""
    title = f"{item['title']}{year}"
    for past in reversed(history):
        shared = [a for a in attrs if a in _attrs(past)]
        if shared:
            shared_txt = " and ".join(a.lower() for a in shared[:2])
            return (f"Because you enjoyed {past['title']}, you may like {title}: "
                    f"it is also a {shared_txt} {kind}.")
    if attrs:
        genre_txt = ", ".join(a.lower() for a in attrs[:3])
        if history:
            return f"{title} is a {genre_txt} {kind} that fits what you have been choosing lately, such as {history[-1]['title']}."
        return f"{title} is a {genre_txt} {kind} you may enjoy."
    if history:
        return f"People who chose {history[-1]['title']} also chose {title}."
    return f"{title} is popular with users like you."


def build_references(inter: pd.DataFrame, items: pd.DataFrame, kind: str, train_per_user: int,
                     history_len: int = 20) -> pd.DataFrame:
    """References for valid/test and the last ``train_per_user`` train interactions of each user.

    ``inter``: processed interactions (user_id, item_id, pos, split, optional ``review``), chronological.
    ``items``: item table indexed by item_id with title/year/genres.
    Returns user_id, item_id, pos, split, text, source.
    """
    info = items.set_index("item_id")[["title", "year", "genres"]].to_dict("index")
    has_review = "review" in inter.columns
    rows = []
    for uid, grp in inter.groupby("user_id", sort=True):
        seq = grp["item_id"].tolist()
        splits = grp["split"].tolist()
        reviews = grp["review"].tolist() if has_review else [None] * len(seq)
        n_train = splits.count("train")
        wanted = set(range(max(0, n_train - train_per_user), len(seq)))
        for p in sorted(wanted):
            text, source = None, "template"
            if has_review:
                text = review_sentence(reviews[p])
                source = "review" if text else "template"
            if text is None:
                hist = [info[i] for i in seq[max(0, p - history_len):p]]
                text = template_explanation(info[seq[p]], hist, kind)
            rows.append((uid, seq[p], p, splits[p], text, source))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "pos", "split", "text", "source"])
