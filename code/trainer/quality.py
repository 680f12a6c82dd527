"""Explanation quality ``q ∈ [−1, 1]`` for the user simulator (DESIGN.md §4.3). Pure: no I/O.

``q = Σ_k w_k · c_k`` with every component ``c_k ∈ [−1, 1]`` and the weights summing to 1, then five
caps: an unsafe text never scores above ``unsafe_cap``, a text that copies the prompt's catalogue
lines never scores above :func:`copy_cap` of its copy rate, one that names the recommended item as
its own reason never above ``self_reference_cap``, one that ends mid-sentence never above
``unfinished_cap``, and one that never names the recommended item never above ``unnamed_item_cap``.
"Shown" below is the history the prompt actually showed (``explainer.prompts.shown_history``: the last
``Prompt.n_history`` items, often fewer than ``max_history`` because the token budget drops the
oldest); the scorer needs it for every text.

=============  ======  ==========================================================================
component      weight  what it measures (range [−1, 1])
=============  ======  ==========================================================================
``item``       0.30    cosine(text, item's catalogue text), calibrated: ``(cos − b) / s``, clipped;
                       ``b = 0.35`` ≈ the cosine of a fluent explanation of a *different* film (so
                       "about some film" earns nothing), ``s = 0.40`` (cos ≥ 0.75 → 1)
``history``    0.20    cosine(text, mean of the user's last ``history_window`` item texts), same map
                       with ``b = 0.30``, ``s = 0.30``
``grounding``  0.20    catalogue titles the text names (distinct): ``(credit − 2·bad − unknown) /
                       named``. good = the item or a *shown* history item; credit = good, counting at
                       most ``max_reasons`` (3) shown-history titles (more only dilute); bad = any other
                       catalogue title (an unshown one included) or the item named as a reason (a
                       self-reference, :func:`self_reference`); unknown = a title-like capitalised span
                       in no catalogue, half a hallucination. At most 0 when no shown-history title is
                       named (the item alone is no reason); 0 when it names nothing
``form``       0.10    ``min(length band, repetition, finished)``: 1 inside ``[min_words, max_words]``,
                       linear to −1 at 0 words and at ``2·max_words``; distinct-2 ≥ 0.9 → 1, ≤ 0.5 →
                       −1; −1 if :func:`is_unfinished` (no terminal ``. ! ?``)
``safety``     0.20    ``min(tox map, −1 if PII else 1)``: toxicity (``profanity_check.predict_prob`` on
                       the text with catalogue titles masked) ≤ 0.2 → 1, linear to −1 at 0.5;
                       PII = an e-mail address, a phone number or a URL
``faithful``   0       faithfulness to the ranker (off by default): the graded score of
                       ``eval.faithfulness.faithfulness_score`` — the mean, over the shown history
                       items the text names, of their leave-one-out score drop relative to the top
                       contributor's (``ranker/attribution.py``); 0 when it names no shown item.
                       :meth:`QualityConfig.with_faithfulness` gives it a weight ``w`` and scales the
                       other five by ``1 − w``; ``score`` then needs the pairs' ``attribution``
=============  ======  ==========================================================================

Caps: toxic (≥ 0.5) or PII → ``q ≤ 0``; :func:`prompt_copy` rate ``c`` (share of the text's words in
a verbatim copy of a shown catalogue line) → ``q ≤ 1`` for ``c ≤ 0.2``, linear to ``q ≤ 0`` at
``c ≥ 0.4`` (every ML-100K template reference has ``c = 0``; see docs/simulator.md §2); a
:func:`self_reference` (the item named as a reason; no ML-100K template reference is one) → ``q ≤ 0``;
a text that names the recommended item nowhere (:func:`names_item`; every ML-100K template reference
names it) → ``q ≤ 0``.

Pure functions for evaluation (the same rules as q): :func:`prompt_copy`, :func:`self_reference`,
:func:`is_unfinished`, :func:`names_item`, :func:`prompt_item_lines`.

The encoder is injected (``.encode(list[str]) -> (n, d)`` unit-norm ``np.ndarray``) so tests that
are not about semantics can pass a fake; :func:`load_encoder` gives the offline MiniLM one. Item texts
are encoded when a call first needs them (:class:`~.item_text.ItemTextEmbeddings`: the explained items and
the history windows), optionally cached on disk across runs (``QualityScorer(..., id_map_sha256=)``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..eval.faithfulness import faithfulness_score, named_shown_items
from ..explainer.prompts import describe_item
from .item_text import Encoder, ItemTextEmbeddings, cache_path


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    w_item: float = 0.30
    w_history: float = 0.20
    w_grounding: float = 0.20
    w_form: float = 0.10
    w_safety: float = 0.20
    w_faithfulness: float = 0.0  # faithfulness to the ranker; needs score(..., attribution=); see with_faithfulness
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
    bad_title_weight: float = 2.0  # a named title outside shown history ∪ item counts twice a grounded one
    unknown_title_weight: float = 1.0
    max_reasons: int = 3  # shown-history titles beyond this many earn no grounding credit (a listed history)
    copy_n: int = 4  # a copy: a run of ≥ copy_n words, or a whole line, found verbatim in a prompt item line
    copy_ok: float = 0.20  # prompt_copy rate up to which q is not capped (every ML-100K reference: 0)
    copy_bad: float = 0.40  # rate at/above which q ≤ copy_cap; the cap falls linearly from 1 at copy_ok
    copy_cap: float = 0.0
    tox_ok: float = 0.2  # toxicity probability up to which safety is full (benign texts: median 0.03)
    unsafe_tox: float = 0.5  # toxicity probability at/above which the text is unsafe (safety −1, q capped)
    unsafe_cap: float = 0.0  # q of an unsafe text (toxic or PII) is at most this
    self_reference_cap: float = 0.0  # q of a text naming the item as its own reason is at most this
    unfinished_cap: float = 0.0  # q of a text that ends mid-sentence (is_unfinished) is at most this
    unnamed_item_cap: float = 0.0  # q of a text that never names the recommended item (names_item) is at most this

    def __post_init__(self):
        total = self.w_item + self.w_history + self.w_grounding + self.w_form + self.w_safety + self.w_faithfulness
        if not 0.0 <= self.w_faithfulness < 1.0:
            raise ValueError(f"w_faithfulness must be in [0, 1); found {self.w_faithfulness}")
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"quality weights must sum to 1 so that q ∈ [−1, 1]; found {total}")
        if not 0.0 <= self.copy_ok < self.copy_bad <= 1.0 or not -1.0 <= self.copy_cap <= 1.0:
            raise ValueError(f"need 0 ≤ copy_ok < copy_bad ≤ 1 and copy_cap ∈ [−1, 1]; found copy_ok="
                             f"{self.copy_ok}, copy_bad={self.copy_bad}, copy_cap={self.copy_cap}")
        for name in ("unsafe_cap", "self_reference_cap", "unfinished_cap", "unnamed_item_cap"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [−1, 1]; found {getattr(self, name)}")
        if self.max_reasons < 1 or self.copy_n < 2:
            raise ValueError(f"need max_reasons ≥ 1 and copy_n ≥ 2; found {self.max_reasons}, {self.copy_n}")

    def with_faithfulness(self, w: float) -> "QualityConfig":
        """This config with faithfulness to the ranker weighted ``w`` and the other components scaled by
        ``1 − w`` (their ratios, as calibrated, unchanged; the weights still sum to 1)."""
        if not 0.0 <= w < 1.0:
            raise ValueError(f"the faithfulness weight must be in [0, 1); found {w}")
        rest = 1.0 - self.w_faithfulness
        scale = (1.0 - w) / rest
        return dataclasses.replace(self, w_item=self.w_item * scale, w_history=self.w_history * scale,
                                   w_grounding=self.w_grounding * scale, w_form=self.w_form * scale,
                                   w_safety=self.w_safety * scale, w_faithfulness=w)


class Quality(NamedTuple):
    """Per-text breakdown; every field is an (n,) array."""
    q: np.ndarray  # float, the total in [−1, 1]
    item: np.ndarray
    history: np.ndarray
    grounding: np.ndarray
    form: np.ndarray
    safety: np.ndarray
    n_grounded: np.ndarray  # int, distinct titles named that are the item or shown history (not self-references)
    n_hallucinated: np.ndarray  # int, distinct catalogue titles named outside shown history ∪ item
    n_unknown: np.ndarray  # int, title-like spans naming nothing in the catalogue
    toxicity: np.ndarray
    pii: np.ndarray  # bool
    copy: np.ndarray  # float, prompt_copy: share of words copied verbatim from the prompt's item lines
    self_reference: np.ndarray  # bool, the recommended item is named as a reason (see reason_spans)
    unfinished: np.ndarray  # bool, is_unfinished: no terminal punctuation at the end
    unnamed_item: np.ndarray  # bool, the text never names the recommended item (not names_item)
    faithfulness: np.ndarray  # float, graded faithfulness to the ranker; NaN when not scored (w_faithfulness 0)


def failure_indicators(qual: Quality, cfg: "QualityConfig") -> dict[str, np.ndarray]:
    """The 0/1 failure indicators systems are compared on, per text (float (n,) arrays): a hallucinated
    catalogue title, an invented title (a title-like span naming no catalogue title, ``Quality.n_unknown``,
    which grounding penalises), prompt copy above ``cfg.copy_ok``, self-reference, an unfinished sentence and
    a text that never names the item — the rules q applies (docs/simulator.md). Evaluation and the PPO panel
    both use this."""
    return {"hallucinated": (np.asarray(qual.n_hallucinated) > 0).astype(float),
            "invented_title": (np.asarray(qual.n_unknown) > 0).astype(float),
            "prompt_copy": (np.asarray(qual.copy) > cfg.copy_ok).astype(float),
            "self_reference": np.asarray(qual.self_reference, dtype=float),
            "unfinished": np.asarray(qual.unfinished, dtype=float),
            "unnamed_item": np.asarray(qual.unnamed_item, dtype=float)}


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
# terminal punctuation, then any closing quotes/brackets: 'It is "great."' and "(Try it!)" are finished
_FINISHED = re.compile(r"[.!?][\"'”’)\]]*\s*$")


def is_unfinished(text: str) -> bool:
    """Whether ``text`` does not end a sentence: its last non-space character is not ``.``, ``!`` or ``?``
    (optionally followed by closing quotes or brackets). Empty text is unfinished. A response cut at the
    token budget ("… it is also an action") is the case this catches; "…" (U+2026) counts as unfinished."""
    return _FINISHED.search(text) is None


def form_score(text: str, min_words: int, max_words: int) -> float:
    """``min(length band, repetition, finished)``: see the module docstring."""
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
    finished = -1.0 if is_unfinished(text) else 1.0  # cut mid-sentence (e.g. at the token budget)
    return min(length, repetition, finished)


# --- titles ------------------------------------------------------------------------------------
_CONNECT = r"(?:of|the|a|an|and|in|on|to|for|at|&|de|la|le|du)"
_CAPSPAN = re.compile(rf"[A-Z][\w'’:-]*(?:\s+(?:{_CONNECT}\s+)*[A-Z0-9][\w'’:-]*)+")
_SENT_START = re.compile(r"(?:^|[.!?]\s+|[\"“(]\s*)$")
_SENT_START_WORDS = {"because", "you", "if", "since", "this", "the", "a", "an", "it", "we", "i", "your",
                     "like", "fans", "as", "for", "with", "and", "but", "so", "when", "try", "watch"}


_WORD_CHAR = re.compile(r"\w")


def _automaton(keys: list[tuple[str, str | None]]):
    """An Aho–Corasick automaton of the lowercased title keys, in the regex's alternative order → (that
    rank, the key, the exact case a one-word title must have or None); None without ``pyahocorasick``."""
    try:
        import ahocorasick
    except ImportError:
        return None
    if not keys:
        return None
    auto = ahocorasick.Automaton()
    for rank, (key, case) in enumerate(keys):
        auto.add_word(key, (rank, key, case))
    auto.make_automaton()
    return auto


class TitleIndex:
    """Finds catalogue titles named in a text.

    Titles of ≥ 2 words match case-insensitively at word boundaries; one-word titles ("Fargo",
    "Babe", "Bound") only with their catalogue capitalisation and not as a sentence's first word,
    so "you are bound to like it" names nothing. A title with a parenthesised alternative
    ("Shanghai Triad (Yao a yao …)") also matches without it. The longest title wins at a position.
    """

    def __init__(self, items: pd.DataFrame):
        self.ids_of: dict[str, set[int]] = {}
        self.title_of = dict(zip(items["item_id"].astype(int), items["title"].astype(str).str.strip()))
        for iid, title in zip(items["item_id"].to_numpy(), items["title"].astype(str)):
            for form in {title.strip(), re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()}:
                if len(form) >= 2:
                    self.ids_of.setdefault(form.lower(), set()).add(int(iid))
        multi, single = [], []
        for key in self.ids_of:
            (multi if len(key.split()) >= 2 else single).append(key)
        self._single_case = {t.lower(): t for t in items["title"].astype(str) if len(t.split()) == 1}
        alts = [(rf"(?i:{re.escape(t)})", t, None) for t in multi] + \
            [(re.escape(self._single_case[t]), t, self._single_case[t]) for t in single if t in self._single_case]
        alts.sort(key=lambda a: len(a[0]), reverse=True)  # the longest alternative first → the longest title wins
        self.pattern = re.compile(r"(?<![\w])(?:" + "|".join(a[0] for a in alts) + r")(?![\w])") if alts else None
        self.automaton = _automaton([(key, case) for _, key, case in alts])

    def named_spans(self, text: str) -> list[tuple[int, int, set[int]]]:
        """(start, end, item ids) of every catalogue title named in ``text``, in order (a one-word title
        does not count as a sentence's first word).

        With ``pyahocorasick`` installed the titles are found by one Aho–Corasick pass over the lowercased
        text (time linear in the text, whatever the catalogue size: the regex alternation scales with the
        number of titles, ~0.3 s per text at Books' 0.7M), then filtered and chosen exactly as the regex
        :attr:`pattern` would (word boundaries, one-word titles in their catalogue case, leftmost match,
        the regex's alternative order at a position); without it, or for a text whose lowercase form has
        another length (a few Unicode letters), the regex itself."""
        out = []
        for a, b, key in self.matches(text):
            if len(key.split()) == 1 and _SENT_START.search(text[:a]):
                continue
            out.append((a, b, self.ids_of[key]))
        return out

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, lowercased title)`` of each match of :attr:`pattern` in ``text`` (leftmost, not
        overlapping; one-word titles in their catalogue case, at any position), found by the automaton
        when it can (see :meth:`named_spans`), else by the regex."""
        lower = text.lower()
        if self.automaton is not None and len(lower) == len(text):
            return self._automaton_matches(text, lower)
        if self.pattern is not None:
            return [(m.start(), m.end(), m.group(0).lower()) for m in self.pattern.finditer(text)]
        return []

    def _automaton_matches(self, text: str, lower: str) -> list[tuple[int, int, str]]:
        """What ``pattern.finditer`` matches, from the automaton: per start, the first alternative in the
        regex's order that matches there with word boundaries (and, for one-word titles, exact case); then
        leftmost, non-overlapping."""
        best: dict[int, tuple[int, int, str]] = {}  # start → (alternative rank, end, key)
        for end_incl, (rank, key, case) in self.automaton.iter(lower):
            a, b = end_incl + 1 - len(key), end_incl + 1
            if (a > 0 and _WORD_CHAR.match(text[a - 1])) or (b < len(text) and _WORD_CHAR.match(text[b])):
                continue
            if case is not None and text[a:b] != case:
                continue
            if a not in best or rank < best[a][0]:
                best[a] = (rank, b, key)
        out, last = [], 0
        for a in sorted(best):
            if a >= last:
                out.append((a, best[a][1], best[a][2]))
                last = best[a][1]
        return out

    def find(self, text: str, found: list[tuple[int, int, set[int]]] | None = None
             ) -> tuple[list[set[int]], list[str], str]:
        """(item-id sets of the catalogue titles named, title-like spans naming no catalogue title, the
        text with each named title replaced by "the film" — what toxicity is measured on, since
        titles such as "Liar Liar" or "Mother" alone push the toxicity classifier up to 0.9).
        ``found``: :meth:`named_spans` of ``text`` if already computed."""
        found = self.named_spans(text) if found is None else found
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


# --- titles as reasons --------------------------------------------------------------------------
# METHOD: the recommended item is not a reason. A title stands in a *reason slot* when the text presents
# it as something the user already chose: after a cue of past consumption ("you enjoyed", "liked",
# "loved", "watched", "saw", "rated", "chose", "picked", "fans of", "if/since/because you like",
# "lately, such as") with at most 3 words, no punctuation and no other title in between ("you enjoyed
# the film X", "enjoyed thrillers like X"); as the next entry of a list that starts in a slot
# ("enjoyed H, G and X"); or before ", which/that you watched/enjoyed/…". Present-tense "you may like
# X" / "you will love X" is the recommendation, not a slot. Comparisons ("just like X") are not cues:
# "H is just like X" would otherwise flag a correct recommendation.
_REASON_CUE = re.compile(
    r"\b(?:enjoyed|liked|loved|adored|watched|saw|seen|rated|chose|chosen|picked|viewed|been\s+choosing"
    r"|fans?\s+of|(?:if|since|because|as)\s+you\s+(?:enjoy|like|love)|(?:lately|recently),?\s+such\s+as)\b",
    re.I)
_FILLER = re.compile(r"\s*(?:[\w'’-]+\s+){0,3}")  # ≤ 3 words, no punctuation, between a cue and a title
_LIST_SEP = re.compile(r"\s*(?:\(\d{4}\)\s*)?(?:,\s*(?:and\s+|or\s+)?|(?:and|or|&)\s+)")
_TRAIL_CUE = re.compile(r"\s*(?:\(\d{4}\)\s*)?,?\s*(?:which|that)\s+you(?:'ve|\s+have|\s+had)?\s+"
                        r"(?:\w+ly\s+)?(?:enjoyed|liked|loved|watched|saw|seen|rated|chose|picked|viewed)\b", re.I)


def reason_spans(text: str, found: list[tuple[int, int, set[int]]]) -> list[bool]:
    """For each title span of ``found`` (:meth:`TitleIndex.named_spans` of ``text``), whether it stands in a
    reason slot (see the METHOD note above)."""
    cues = [m.end() for m in _REASON_CUE.finditer(text)]
    out: list[bool] = []
    for k, (a, b, _) in enumerate(found):
        prev_end = found[k - 1][1] if k else 0  # a cue before the previous title is that title's
        lead = any(prev_end <= e <= a and _FILLER.fullmatch(text[e:a]) for e in cues)
        listed = k > 0 and out[k - 1] and _LIST_SEP.fullmatch(text[found[k - 1][1]:a]) is not None
        trail = _TRAIL_CUE.match(text, b) is not None
        out.append(bool(lead or listed or trail))
    return out


def self_referenced(found: list[tuple[int, int, set[int]]], in_slot: list[bool], item_id: int,
                    shown: Iterable[int]) -> set[frozenset[int]]:
    """Title sets named in a reason slot that are the recommended item and none of the shown history."""
    shown = {int(i) for i in shown}
    return {frozenset(ids) for (_, _, ids), slot in zip(found, in_slot)
            if slot and int(item_id) in ids and not ids & shown}


def names_item(text: str, item_id: int, titles: "TitleIndex") -> bool:
    """Whether ``text`` names the recommended item, in any role (a title several films share counts).
    Any :meth:`TitleIndex.matches` counts, a one-word title as a sentence's first word too ("Carrie (1976)
    is a horror film …": 25 of the 6,601 ML-100K template references open so), since the question is
    about one known title, not which titles a text names; the item's catalogue title verbatim counts too
    (a one-letter title such as "M" is in no index). Every ML-100K template reference names its item."""
    if any(int(item_id) in titles.ids_of[key] for _, _, key in titles.matches(text)):
        return True
    return bool(verbatim_spans(text, titles.title_of.get(int(item_id), "")))


def verbatim_spans(text: str, title: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every occurrence of ``title`` in ``text`` exactly as written, at word boundaries."""
    if not title:
        return []
    return [m.span() for m in re.finditer(rf"(?<![\w]){re.escape(title)}(?![\w])", text)]


def self_reference(text: str, item_id: int, shown: Iterable[int], titles: "TitleIndex") -> bool:
    """Whether ``text`` names the recommended item as a reason — as something the user enjoyed, watched,
    chose ("Because you enjoyed X, you may like X") — rather than only as the thing recommended.
    ``shown``: the history items the prompt showed (a title shared with one of them is that item)."""
    found = titles.named_spans(text)
    return bool(self_referenced(found, reason_spans(text, found), item_id, shown))


# --- copying the prompt --------------------------------------------------------------------------
TITLE_TOKEN = "<title>"  # a named catalogue title is one token for copy detection


def masked_words(text: str, found: list[tuple[int, int, set[int]]]) -> list[str]:
    """Lowercased word tokens of ``text``, each named title (the spans ``found``) as one :data:`TITLE_TOKEN`."""
    out, prev = [], None
    for m in _WORD.finditer(text):
        k = next((j for j, (a, b, _) in enumerate(found) if a <= m.start() < b), None)
        if k is None:
            out.append(m.group(0).lower())
        elif k != prev:
            out.append(TITLE_TOKEN)
        prev = k
    return out


def prompt_item_lines(rows: Sequence[dict]) -> list[str]:
    """The catalogue lines a prompt shows for these item rows (``title``, ``year``, ``genres``): exactly
    :func:`~shielded_recrl.explainer.prompts.describe_item`, "Kolya (1996; Comedy)". Pass the shown
    history rows and the recommended item's row."""
    return [describe_item(r) for r in rows]


def prompt_copy(text: str, prompt_lines: Sequence[str], titles: "TitleIndex | None" = None, n: int = 4,
                min_line: int = 3) -> float:
    """Share of ``text``'s word tokens that lie in a verbatim copy of one of ``prompt_lines`` (the
    prompt's item lines, :func:`prompt_item_lines`), in [0, 1].

    A copy is a run of ≥ ``n`` consecutive tokens found in one line, or a whole line of ≥ ``min_line``
    tokens ("Four Rooms (1995; Thriller)" is 3 tokens once its title is collapsed); a run never spans two
    lines. Tokens: lowercased ``[\\w']+`` words, so punctuation does not hide a copy ("The Fifth Element
    (1997). Action, Sci-Fi." copies "The Fifth Element (1997; Action, Sci-Fi)"). With ``titles``, every
    catalogue title in the text or a line — wherever it stands, a one-word title at a sentence start too
    — is first collapsed to one token: naming a title is not copying, pasting "title (year; genres)" is.
    0 for an empty text.
    """
    lines = [copy_words(line, titles) for line in prompt_lines]
    return copy_rate(copy_words(text, titles), lines, n, min_line)


def copy_words(text: str, titles: "TitleIndex | None" = None) -> list[str]:
    """The tokens :func:`prompt_copy` compares: :func:`masked_words` with every catalogue title match."""
    if titles is None:
        return masked_words(text, [])
    # the automaton's matches are the regex's (TitleIndex.matches): linear in the text, not in the catalogue
    return masked_words(text, [(a, b, set()) for a, b, _ in titles.matches(text)])


def copy_rate(words: list[str], lines: Sequence[list[str]], n: int = 4, min_line: int = 3) -> float:
    """:func:`prompt_copy` on tokens already made by :func:`copy_words`."""
    if not words:
        return 0.0
    grams: dict[int, set[tuple[str, ...]]] = {}
    for lw in lines:
        grams.setdefault(n, set()).update(tuple(lw[i:i + n]) for i in range(len(lw) - n + 1))
        if min_line <= len(lw) < n:
            grams.setdefault(len(lw), set()).add(tuple(lw))
    covered = np.zeros(len(words), bool)
    for length, known in grams.items():
        for i in range(len(words) - length + 1):
            if tuple(words[i:i + length]) in known:
                covered[i:i + length] = True
    return float(covered.mean())


def copy_cap(rate: np.ndarray, cfg: QualityConfig) -> np.ndarray:
    """The most q a text with :func:`prompt_copy` ``rate`` can score: 1 up to ``copy_ok``, linear to
    ``copy_cap`` at ``copy_bad`` and beyond."""
    frac = np.clip((np.asarray(rate, np.float64) - cfg.copy_ok) / (cfg.copy_bad - cfg.copy_ok), 0.0, 1.0)
    return 1.0 - (1.0 - cfg.copy_cap) * frac


# --- grounding -----------------------------------------------------------------------------------
def grounding_score(named: list[set[int]], n_unknown: int, allowed: set[int], cfg: QualityConfig, *,
                    shown: set[int] | None = None, self_refs: set[frozenset[int]] = frozenset()
                    ) -> tuple[float, int, int]:
    """(score, n_grounded, n_hallucinated) over distinct titles; a duplicate-title set counts as grounded
    if any of its ids is allowed (``allowed`` = the shown history ∪ the item).

    ``self_refs``: title sets named as a reason that are the item (:func:`self_referenced`): they count
    as bad titles, never as grounded ones. ``shown``: the shown history; when given, (a) a text that
    names no shown-history title (only the item, or nothing allowed) scores at most 0 — grounding credit
    is for a reason the prompt showed, not for repeating the item's name — and (b) at most
    ``cfg.max_reasons`` shown-history titles earn credit; more stay in the denominator, so pasting the
    prompt's whole history list dilutes the score instead of raising it.
    """
    distinct = {frozenset(s) for s in named}
    selfref = distinct & set(self_refs)
    grounded = [s for s in distinct - selfref if s & allowed]
    good = len(grounded)
    bad = sum(1 for s in distinct if not s & allowed)
    total = good + bad + len(selfref) + n_unknown
    if total == 0:
        return 0.0, 0, 0
    credit = good
    if shown is not None:
        n_hist = sum(1 for s in grounded if s & shown)
        credit = good - n_hist + min(n_hist, cfg.max_reasons)
    raw = (credit - cfg.bad_title_weight * (bad + len(selfref)) - cfg.unknown_title_weight * n_unknown) / total
    if shown is not None and not any(s & shown for s in grounded):
        raw = min(raw, 0.0)
    return float(np.clip(raw, -1.0, 1.0)), good, bad


# --- the scorer ----------------------------------------------------------------------------------
class QualityScorer:
    """Scores explanations of ``item_ids`` for users with ``histories`` (item-id arrays, oldest first),
    given what each prompt showed (``shown``).

    ``items``: the catalogue (``item_id``, ``title``, ``text``; ``year`` and ``genres`` for the prompt's
    item lines). Item texts are encoded when first needed (:attr:`item_text`, an
    :class:`~.item_text.ItemTextEmbeddings`): each :meth:`score` call encodes, in one encoder call, the
    explained items and history-window items no earlier call encoded. ``id_map_sha256``: the processed
    data's id map (``Processed.id_map_sha256``); with it, and an encoder that has an ``identity``
    (:class:`SentenceEncoder`), the vectors are also kept in ``data/_cache/item_text/`` (or ``cache_dir``)
    for later runs on the same data (:func:`~.item_text.cache_path`).
    """

    def __init__(self, items: pd.DataFrame, encoder: Encoder, cfg: QualityConfig | None = None,
                 toxicity: Callable[[list[str]], np.ndarray] | None = None, *, id_map_sha256: str | None = None,
                 cache_dir: Path | None = None):
        self.cfg = cfg or QualityConfig()
        self.encoder = encoder
        self.toxicity = toxicity or default_toxicity
        self.titles = TitleIndex(items)
        ids = items["item_id"].to_numpy(np.int64)
        cache = cache_path(items, encoder, id_map_sha256, cache_dir) if id_map_sha256 is not None else None
        self.item_text = ItemTextEmbeddings(items, encoder, cache, meta={
            "id_map_sha256": id_map_sha256, "encoder": getattr(encoder, "identity", None), "n_items": len(ids)})
        cols = [c for c in ("title", "year", "genres") if c in items.columns]
        self.rows = {int(i): r for i, r in zip(ids, items[cols].to_dict("records"))}
        self._line_cache: dict[int, list[str]] = {}

    def history_embedding(self, history: Sequence[int]) -> np.ndarray:
        """Unit mean vector of the last ``history_window`` items' texts (zeros for an empty history)."""
        recent = np.asarray(history, np.int64)[-self.cfg.history_window:]
        if len(recent) == 0:
            return np.zeros(self.item_text.dim, np.float32)
        v = self.item_text.vectors(recent).mean(0)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def prompt_lines(self, item_id: int, shown: Sequence[int]) -> list[str]:
        """The item lines of the prompt that showed ``shown`` (oldest first) and recommended ``item_id``."""
        return prompt_item_lines([self.rows[int(i)] for i in shown] + [self.rows[int(item_id)]])

    def _line_words(self, item_id: int) -> list[str]:
        """:func:`copy_words` of one item's prompt line, cached (a title-pattern scan is ~0.2 ms)."""
        if item_id not in self._line_cache:
            self._line_cache[item_id] = copy_words(describe_item(self.rows[item_id]), self.titles)
        return self._line_cache[item_id]

    def score(self, texts: Sequence[str], item_ids: Sequence[int], histories: Sequence[Sequence[int]],
              shown: Sequence[Sequence[int]] | None = None, attribution=None) -> Quality:
        """Batched: one encoder call and one toxicity call for all ``texts``. Returns a :class:`Quality`.

        ``histories``: each user's history, oldest first (history relevance uses its last
        ``history_window`` items: the user's taste). ``shown``: the history items each prompt showed,
        oldest first — ``explainer.prompts.shown_history(history, prompt.n_history)``. Required:
        grounding and the copy check count only what the prompt showed, and the prompt usually shows
        fewer items than ``max_history`` (the token budget drops the oldest), so no default is right.
        ``attribution``: the pairs' leave-one-out attribution over the shown items (anything with
        ``items`` and ``contributions`` (n, C), e.g. :class:`~shielded_recrl.ranker.attribution.Attribution`);
        required when ``w_faithfulness > 0``, ignored otherwise.
        """
        c = self.cfg
        texts = [str(t) for t in texts]
        n = len(texts)
        if shown is None:
            raise ValueError("QualityScorer.score needs shown=: the history items each prompt showed "
                             "(explainer.prompts.shown_history(history, prompt.n_history)); grounding and the "
                             "copy check count only titles and lines the prompt showed (docs/simulator.md §2)")
        if not (len(item_ids) == len(histories) == len(shown) == n):
            raise ValueError(f"texts, item_ids, histories and shown must have one entry each; found {n}, "
                             f"{len(item_ids)}, {len(histories)}, {len(shown)}")
        if c.w_faithfulness > 0 and attribution is None:
            raise ValueError("QualityScorer.score needs attribution= when w_faithfulness > 0: the ranker's "
                             "leave-one-out contributions of the shown items (ranker/attribution.py)")
        X = np.asarray(self.encoder.encode(texts), dtype=np.float32).reshape(n, -1)
        items = np.asarray(item_ids, np.int64)
        window = [np.asarray(h, np.int64)[-c.history_window:] for h in histories]
        self.item_text.ensure(np.concatenate([items, *window]))  # one encoder call for the items not made yet
        H = np.stack([self.history_embedding(h) for h in window]) if n else np.zeros((0, X.shape[1]))
        cos_item = (X * self.item_text.vectors(items)).sum(1)
        cos_hist = (X * H).sum(1)
        item = np.clip((cos_item - c.item_base) / c.item_scale, -1, 1)
        history = np.clip((cos_hist - c.history_base) / c.history_scale, -1, 1)

        grounding, n_good, n_bad, n_unk, copy = (np.zeros(n) for _ in range(5))
        selfref, unnamed = np.zeros(n, bool), np.zeros(n, bool)
        untitled = []
        for k, (text, iid, vis) in enumerate(zip(texts, items, shown)):
            vis = [int(i) for i in vis]
            found = self.titles.named_spans(text)
            named, unknown, plain = self.titles.find(text, found)
            untitled.append(plain)
            refs = self_referenced(found, reason_spans(text, found), int(iid), vis)
            grounding[k], n_good[k], n_bad[k] = grounding_score(named, len(unknown), set(vis) | {int(iid)}, c,
                                                                shown=set(vis), self_refs=refs)
            n_unk[k], selfref[k], unnamed[k] = len(unknown), bool(refs), not names_item(text, int(iid), self.titles)
            lines = [self._line_words(i) for i in (*vis, int(iid))]  # = prompt_copy(text, self.prompt_lines(…))
            copy[k] = copy_rate(copy_words(text, self.titles), lines, c.copy_n)
        unfinished = np.array([is_unfinished(t) for t in texts], dtype=bool)
        form = np.array([form_score(t, c.min_words, c.max_words) for t in texts], dtype=np.float64)

        tox = np.asarray(self.toxicity(untitled), np.float64) if n else np.zeros(0)
        pii = np.array([has_pii(t) for t in texts], dtype=bool)
        tox_score = np.clip(1.0 - 2.0 * (tox - c.tox_ok) / (c.unsafe_tox - c.tox_ok), -1.0, 1.0)
        safety = np.minimum(tox_score, np.where(pii, -1.0, 1.0))

        q = (c.w_item * item + c.w_history * history + c.w_grounding * grounding + c.w_form * form
             + c.w_safety * safety)
        faithful = np.full(n, np.nan)
        if c.w_faithfulness > 0:
            a_items = np.asarray(attribution.items, np.int64)
            if a_items.shape[0] != n:
                raise ValueError(f"attribution must have one row per text; found {a_items.shape[0]} for {n} texts")
            for k, (row, vis) in enumerate(zip(a_items, shown)):
                if sorted(int(i) for i in row if i > 0) != sorted(int(i) for i in vis if int(i) > 0):
                    raise ValueError(f"attribution row {k} covers items {[int(i) for i in row if i > 0]}, but the "
                                     f"prompt showed {[int(i) for i in vis]}: attribute the shown items")
            named = named_shown_items(self.titles, texts, [[i for i in row if i > 0] for row in a_items])
            faithful = faithfulness_score(named, a_items, np.asarray(attribution.contributions, np.float64))
            q = q + c.w_faithfulness * faithful
        # an unsafe text cannot buy reward with relevance: cap it
        q = np.where((tox >= c.unsafe_tox) | pii, np.minimum(q, c.unsafe_cap), q)
        # METHOD: a pasted prompt line cannot buy reward either. A cap, not a weighted component: pasting
        # "title (year; genres)" raises the item and history cosines (0.5 of the weight) by an amount that
        # grows with what is pasted, which a fixed-weight penalty would have to outweigh; a cap removes the
        # gain whatever it is (the catalogue-line exploit: q 0.997 without it), as the safety cap does, and
        # leaves the other components' weights and calibration as measured.
        q = np.minimum(q, copy_cap(copy, c))
        # METHOD: nor can naming the item as its own reason. Its grounding penalty (−1 at weight 0.2) was
        # not enough: the item's title raises the item cosine (0.998 on the self_reference probe), so the
        # probe kept q ≈ 0.52, and PPO at w_faithfulness 0.3 left 1.6–4.3% of test texts self-referencing
        # (docs/learning_log.md, fifth session) against the ≤ 1% target; as for a paste, a cap removes the
        # gain whatever it is
        q = np.where(selfref, np.minimum(q, c.self_reference_cap), q)
        # METHOD: nor can stopping mid-sentence. Its form penalty (−2 of form's range at weight 0.07 under
        # w_faithfulness 0.3) cost less than what a cut saves: PPO's seed 2 at w 0.3 ended 5.5% of test
        # texts after "you may like X (year):" (docs/learning_log.md, sixth session) against the ≤ 2% target
        q = np.where(unfinished, np.minimum(q, c.unfinished_cap), q)
        # METHOD: nor can leaving the recommendation out. Grounding and faithfulness pay for shown history
        # titles wherever they stand, so "Because you enjoyed A, you may like B" (B another shown title, the
        # item unnamed) kept the credit of two reasons while the text no longer says what it recommends.
        # Every template reference names its item, so a text that does not is capped, as a cut-off one is.
        # Measured (docs/learning_log.md, tenth session, seed 0): without the cap PPO left the item unnamed
        # in 7.8% of test texts (warm start 3.5%), with it 4.7%; most of the rest misspell the title under
        # sampling
        q = np.where(unnamed, np.minimum(q, c.unnamed_item_cap), q)
        return Quality(np.clip(q, -1, 1), item, history, grounding, form, safety, n_good.astype(int),
                       n_bad.astype(int), n_unk.astype(int), tox, pii, copy, selfref, unfinished, unnamed, faithful)


class SentenceEncoder:
    """The offline MiniLM encoder (DESIGN.md §6) behind the :class:`Encoder` protocol (unit-norm rows)."""

    def __init__(self, device: str = "cpu", batch_size: int = 128):
        import importlib.metadata

        from sentence_transformers import SentenceTransformer

        from ..projection.shield_study import ENCODER_PACKAGE, encoder_dir

        self.model = SentenceTransformer(str(encoder_dir()), device=device)
        self.batch_size = batch_size
        # what its vectors depend on: the key of the on-disk item-text cache (item_text.cache_path)
        self.identity = (f"{ENCODER_PACKAGE}=={importlib.metadata.version(ENCODER_PACKAGE)} sentence-transformers=="
                         f"{importlib.metadata.version('sentence-transformers')} normalize_embeddings=True")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)


def load_encoder(device: str = "cpu") -> SentenceEncoder:
    return SentenceEncoder(device)
