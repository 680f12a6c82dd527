"""Explanation quality ``q ∈ [−1, 1]`` for the user simulator (DESIGN.md §4.3). Pure: no I/O.

``q = Σ_k w_k · c_k`` with every component ``c_k ∈ [−1, 1]`` and the weights summing to 1, then a
safety cap (an unsafe text never scores above ``unsafe_cap``):

=============  ======  ==========================================================================
component      weight  what it measures (range [−1, 1])
=============  ======  ==========================================================================
``item``       0.30    cosine(text, item's catalogue text), calibrated: ``(cos − b) / s``, clipped;
                       ``b = 0.35`` ≈ the cosine of a fluent explanation of a *different* film (so
                       "about some film" earns nothing), ``s = 0.40`` (cos ≥ 0.75 → 1)
``history``    0.20    cosine(text, mean of the user's last ``history_window`` item texts), same map
                       with ``b = 0.30``, ``s = 0.30``
``grounding``  0.20    catalogue titles the text names: ``(good − 2·bad − unknown) / named``
                       (good = the item or one of the user's history; bad = any other catalogue
                       title, an invented reference; unknown = a title-like capitalised span that
                       is in no catalogue, half a hallucination); 0 when it names nothing
``form``       0.10    ``min(length band, repetition)``: 1 inside ``[min_words, max_words]``, linear
                       to −1 at 0 words and at ``2·max_words``; distinct-2 ≥ 0.9 → 1, ≤ 0.5 → −1
``safety``     0.20    ``min(tox map, −1 if PII else 1)``: toxicity (``profanity_check.predict_prob`` on
                       the text with catalogue titles masked) ≤ 0.2 → 1, linear to −1 at 0.5;
                       PII = an e-mail address, a phone number or a URL
=============  ======  ==========================================================================

The encoder is injected (``.encode(list[str]) -> (n, d)`` unit-norm ``np.ndarray``) so tests that
are not about semantics can pass a fake; :func:`load_encoder` gives the offline MiniLM one.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import pandas as pd


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    w_item: float = 0.30
    w_history: float = 0.20
    w_grounding: float = 0.20
    w_form: float = 0.10
    w_safety: float = 0.20
    # Calibration measured on 30 ML-100K test pairs (docs/simulator.md): cos(text, item text) is 0.74
    # for the reference, 0.37 for a fluent explanation of another film, 0.13 for generic praise, 0.07
    # for an unrelated sentence; cos(text, history) 0.54 / 0.49 / 0.17 / 0.09.
    item_base: float = 0.35  # ≈ a fluent explanation of a *different* film → 0
    item_scale: float = 0.40  # cos ≥ 0.75 → 1
    history_base: float = 0.30
    history_scale: float = 0.30  # cos ≥ 0.60 → 1
    history_window: int = 10  # the user's most recent items that define "their history" for relevance
    min_words: int = 8
    max_words: int = 60
    bad_title_weight: float = 2.0  # a named title outside history ∪ item counts twice a grounded one
    unknown_title_weight: float = 1.0
    tox_ok: float = 0.2  # toxicity probability up to which safety is full (benign texts: median 0.03)
    unsafe_tox: float = 0.5  # toxicity probability at/above which the text is unsafe (safety −1, q capped)
    unsafe_cap: float = 0.0  # q of an unsafe text (toxic or PII) is at most this

    def __post_init__(self):
        total = self.w_item + self.w_history + self.w_grounding + self.w_form + self.w_safety
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"quality weights must sum to 1 so that q ∈ [−1, 1]; found {total}")


class Quality(NamedTuple):
    """Per-text breakdown; every field is an (n,) array."""
    q: np.ndarray  # float, the total in [−1, 1]
    item: np.ndarray
    history: np.ndarray
    grounding: np.ndarray
    form: np.ndarray
    safety: np.ndarray
    n_grounded: np.ndarray  # int, distinct titles named that are the item or in the history
    n_hallucinated: np.ndarray  # int, distinct catalogue titles named outside history ∪ item
    n_unknown: np.ndarray  # int, title-like spans naming nothing in the catalogue
    toxicity: np.ndarray
    pii: np.ndarray  # bool


# --- safety --------------------------------------------------------------------------------------
PII_PATTERNS = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    "phone": re.compile(r"(?<!\w)(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3,4}[\s.-]?\d{3,4}(?!\w)"),
    "url": re.compile(r"\b(?:https?://|www\.)\S+|\b[\w-]+\.(?:com|org|net|io|co|uk|de)\b(?:/\S*)?", re.I),
}


def has_pii(text: str) -> bool:
    return any(p.search(text) for p in PII_PATTERNS.values())


def default_toxicity(texts: list[str]) -> np.ndarray:
    """Probability of offensive language per text (alt-profanity-check; DESIGN.md §6)."""
    from profanity_check import predict_prob

    return np.asarray(predict_prob(list(texts)), dtype=np.float64)


# --- form ----------------------------------------------------------------------------------------
_WORD = re.compile(r"[\w']+")


def form_score(text: str, min_words: int, max_words: int) -> float:
    words = [w.lower() for w in _WORD.findall(text)]
    n = len(words)
    if n < min_words:
        length = -1.0 + 2.0 * n / min_words
    elif n <= max_words:
        length = 1.0
    else:
        length = max(-1.0, 1.0 - 2.0 * (n - max_words) / max_words)
    bigrams = list(zip(words, words[1:]))
    d2 = len(set(bigrams)) / len(bigrams) if bigrams else 0.0  # distinct-2 (Li et al. 2016)
    repetition = float(np.clip(-1.0 + 2.0 * (d2 - 0.5) / 0.4, -1.0, 1.0))
    return min(length, repetition)


# --- grounding -----------------------------------------------------------------------------------
_CONNECT = r"(?:of|the|a|an|and|in|on|to|for|at|&|de|la|le|du)"
_CAPSPAN = re.compile(rf"[A-Z][\w'’:-]*(?:\s+(?:{_CONNECT}\s+)*[A-Z0-9][\w'’:-]*)+")
_SENT_START = re.compile(r"(?:^|[.!?]\s+|[\"“(]\s*)$")
_SENT_START_WORDS = {"because", "you", "if", "since", "this", "the", "a", "an", "it", "we", "i", "your",
                     "like", "fans", "as", "for", "with", "and", "but", "so", "when", "try", "watch"}


class TitleIndex:
    """Finds catalogue titles named in a text.

    Titles of ≥ 2 words match case-insensitively at word boundaries; one-word titles ("Fargo",
    "Babe", "Bound") only with their catalogue capitalisation and not as a sentence's first word,
    so "you are bound to like it" names nothing. A title with a parenthesised alternative
    ("Shanghai Triad (Yao a yao …)") also matches without it. The longest title wins at a position.
    """

    def __init__(self, items: pd.DataFrame):
        self.ids_of: dict[str, set[int]] = {}
        for iid, title in zip(items["item_id"].to_numpy(), items["title"].astype(str)):
            for form in {title.strip(), re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()}:
                if len(form) >= 2:
                    self.ids_of.setdefault(form.lower(), set()).add(int(iid))
        multi, single = [], []
        for key in self.ids_of:
            (multi if len(key.split()) >= 2 else single).append(key)
        self._single_case = {t.lower(): t for t in items["title"].astype(str) if len(t.split()) == 1}
        alts = [rf"(?i:{re.escape(t)})" for t in multi] + [re.escape(self._single_case[t]) for t in single
                                                           if t in self._single_case]
        alts.sort(key=len, reverse=True)  # the longest alternative first → the longest title wins
        self.pattern = re.compile(r"(?<![\w])(?:" + "|".join(alts) + r")(?![\w])") if alts else None

    def named_spans(self, text: str) -> list[tuple[int, int, set[int]]]:
        """(start, end, item ids) of every catalogue title named in ``text``, in order (a one-word title
        does not count as a sentence's first word)."""
        out = []
        if self.pattern is not None:
            for m in self.pattern.finditer(text):
                key = m.group(0).lower()
                if len(key.split()) == 1 and _SENT_START.search(text[:m.start()]):
                    continue
                out.append((m.start(), m.end(), self.ids_of[key]))
        return out

    def find(self, text: str) -> tuple[list[set[int]], list[str], str]:
        """(item-id sets of the catalogue titles named, title-like spans naming no catalogue title, the
        text with each named title replaced by "the film" — what toxicity is measured on, since
        titles such as "Liar Liar" or "Mother" alone push the toxicity classifier up to 0.9)."""
        found = self.named_spans(text)
        named = [ids for _, _, ids in found]
        spans = [(a, b) for a, b, _ in found]
        chars = list(text)
        for a, b in spans:
            chars[a:b] = ["#"] * (b - a)  # named titles cannot be part of an unknown span
        masked, unknown = "".join(chars), []
        for m in _CAPSPAN.finditer(masked):
            words = m.group(0).split()
            if _SENT_START.search(masked[:m.start()]) and words[0].lower() in _SENT_START_WORDS:
                words = words[1:]
            if sum(w[:1].isupper() for w in words) >= 2:
                unknown.append(" ".join(words))
        out, prev = [], 0
        for a, b in spans:
            out += [text[prev:a], "the film"]
            prev = b
        return named, unknown, "".join(out) + text[prev:]


def grounding_score(named: list[set[int]], n_unknown: int, allowed: set[int],
                    cfg: QualityConfig) -> tuple[float, int, int]:
    """(score, n_grounded, n_hallucinated): distinct titles; a duplicate-title set counts as grounded if
    any of its ids is allowed."""
    distinct = {frozenset(s) for s in named}
    good = sum(1 for s in distinct if s & allowed)
    bad = len(distinct) - good
    total = good + bad + n_unknown
    if total == 0:
        return 0.0, 0, 0
    raw = (good - cfg.bad_title_weight * bad - cfg.unknown_title_weight * n_unknown) / total
    return float(np.clip(raw, -1.0, 1.0)), good, bad


# --- the scorer ----------------------------------------------------------------------------------
class QualityScorer:
    """Scores explanations of ``item_ids`` for users with ``histories`` (item-id arrays, oldest first).

    ``items``: the catalogue (``item_id``, ``title``, ``text``). Item texts are encoded once here.
    """

    def __init__(self, items: pd.DataFrame, encoder: Encoder, cfg: QualityConfig | None = None,
                 toxicity: Callable[[list[str]], np.ndarray] | None = None):
        self.cfg = cfg or QualityConfig()
        self.encoder = encoder
        self.toxicity = toxicity or default_toxicity
        self.titles = TitleIndex(items)
        ids = items["item_id"].to_numpy(np.int64)
        emb = np.asarray(encoder.encode(items["text"].astype(str).tolist()), dtype=np.float32)
        self.item_emb = np.zeros((int(ids.max()) + 1, emb.shape[1]), np.float32)  # row = item_id; 0 = padding
        self.item_emb[ids] = emb

    def history_embedding(self, history: Sequence[int]) -> np.ndarray:
        recent = np.asarray(history, np.int64)[-self.cfg.history_window:]
        if len(recent) == 0:
            return np.zeros(self.item_emb.shape[1], np.float32)
        v = self.item_emb[recent].mean(0)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def score(self, texts: Sequence[str], item_ids: Sequence[int], histories: Sequence[Sequence[int]]) -> Quality:
        """Batched: one encoder call and one toxicity call for all ``texts``. Returns a :class:`Quality`."""
        c = self.cfg
        texts = [str(t) for t in texts]
        n = len(texts)
        if not (len(item_ids) == len(histories) == n):
            raise ValueError(f"texts, item_ids and histories must have one entry each; found {n}, "
                             f"{len(item_ids)}, {len(histories)}")
        X = np.asarray(self.encoder.encode(texts), dtype=np.float32).reshape(n, -1)
        items = np.asarray(item_ids, np.int64)
        H = np.stack([self.history_embedding(h) for h in histories]) if n else np.zeros((0, X.shape[1]))
        cos_item = (X * self.item_emb[items]).sum(1)
        cos_hist = (X * H).sum(1)
        item = np.clip((cos_item - c.item_base) / c.item_scale, -1, 1)
        history = np.clip((cos_hist - c.history_base) / c.history_scale, -1, 1)

        grounding, n_good, n_bad, n_unk = (np.zeros(n) for _ in range(4))
        untitled = []
        for k, (text, iid, hist) in enumerate(zip(texts, items, histories)):
            named, unknown, plain = self.titles.find(text)
            untitled.append(plain)
            allowed = set(map(int, hist)) | {int(iid)}
            grounding[k], n_good[k], n_bad[k] = grounding_score(named, len(unknown), allowed, c)
            n_unk[k] = len(unknown)
        form = np.array([form_score(t, c.min_words, c.max_words) for t in texts], dtype=np.float64)

        tox = np.asarray(self.toxicity(untitled), np.float64) if n else np.zeros(0)
        pii = np.array([has_pii(t) for t in texts], dtype=bool)
        tox_score = np.clip(1.0 - 2.0 * (tox - c.tox_ok) / (c.unsafe_tox - c.tox_ok), -1.0, 1.0)
        safety = np.minimum(tox_score, np.where(pii, -1.0, 1.0))

        q = (c.w_item * item + c.w_history * history + c.w_grounding * grounding + c.w_form * form
             + c.w_safety * safety)
        # an unsafe text cannot buy reward with relevance: cap it
        q = np.where((tox >= c.unsafe_tox) | pii, np.minimum(q, c.unsafe_cap), q)
        return Quality(np.clip(q, -1, 1), item, history, grounding, form, safety, n_good.astype(int),
                       n_bad.astype(int), n_unk.astype(int), tox, pii)


class SentenceEncoder:
    """The offline MiniLM encoder (DESIGN.md §6) behind the :class:`Encoder` protocol (unit-norm rows)."""

    def __init__(self, device: str = "cpu", batch_size: int = 128):
        from sentence_transformers import SentenceTransformer

        from ..projection.shield_study import encoder_dir

        self.model = SentenceTransformer(str(encoder_dir()), device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)


def load_encoder(device: str = "cpu") -> SentenceEncoder:
    return SentenceEncoder(device)
