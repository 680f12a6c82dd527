"""Explanation-quality metrics (DESIGN.md §5, "Explanations"). Pure functions over texts; no file I/O.

Every metric except ``mean_len`` and ``n`` is a fraction in [0, 1] (BLEU is sacrebleu's score / 100), so
one table can show them side by side. Hypothesis ``i`` is compared with reference ``i`` only.

==================  ================================================================================
key                 definition
==================  ================================================================================
``bleu1``           corpus BLEU with ``max_ngram_order=1`` (sacrebleu 2.x ``BLEU``): brevity penalty ×
                    clipped unigram precision, over all pairs at once; 13a tokenisation, lowercased
``bleu4``           corpus BLEU-4, sacrebleu defaults otherwise (``exp`` smoothing), lowercased
``rouge1/2/L``      mean over pairs of the ROUGE-1/2/L F1 (``rouge_score``, Porter stemming on)
``embed_sim``       mean over pairs of cos(encoder(hypothesis), encoder(reference)), BERTScore-style
                    with the injected sentence encoder (rows re-normalised here)
``usr``             unique sentence ratio: distinct normalised hypotheses / hypotheses (normalised =
                    lowercased word tokens joined by one space, so case and punctuation do not count)
``distinct1/2``     corpus-level distinct n-grams / all n-grams over the lowercased word tokens of
                    all hypotheses (Li et al. 2016, "A Diversity-Promoting Objective …", NAACL)
``feature_match``   share of explanations that name at least one genre of their item (see
                    :func:`genre_pattern`), matched on the text with catalogue titles masked, so
                    "Star Wars" does not count as naming the genre War
``hallucination_rate``  share of explanations naming a catalogue title (``TitleIndex.find``, the
                    simulator's matcher) that is neither the item nor in the history the prompt showed
                    (the record's ``shown``, see below); counted as in ``grounding_score``: a title
                    shared by several items is grounded if any of them is allowed. Title-like spans
                    outside the catalogue do not count here
``prompt_copy_rate``  share of explanations whose ``quality.prompt_copy`` (share of words in a verbatim
                    copy of a prompt item line: the shown history's and the item's catalogue lines)
                    exceeds ``QualityConfig.copy_ok`` (0.2), the rate above which the simulator caps q
``self_reference_rate``  share of explanations naming the recommended item as a reason
                    (``quality.self_reference``: "Because you enjoyed X, you may like X")
``unfinished_rate`` share of explanations not ending a sentence (``quality.is_unfinished``)
``mean_len``        mean number of word tokens (``[\\w']+``) per hypothesis
``n``               number of records
==================  ================================================================================

The prompt-visible history: a record's ``shown`` (the history items the prompt showed,
``explainer.prompts.shown_history(history, prompt.n_history)``) when it has one, else its ``history``,
which must then hold only what the prompt showed. Counting against the user's whole history would
let a film the prompt never showed pass as grounded.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..trainer.quality import (Encoder, QualityConfig, TitleIndex, grounding_score, is_unfinished, prompt_copy,
                               prompt_item_lines, self_reference)

METRIC_KEYS = ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "embed_sim", "usr", "distinct1", "distinct2",
               "feature_match", "hallucination_rate", "prompt_copy_rate", "self_reference_rate", "unfinished_rate",
               "mean_len", "n")
RECORD_KEYS = ("text", "reference", "item_id", "history")

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    """Lowercased word tokens (letters, digits, apostrophes), the unit of USR, distinct-n and length."""
    return [w.lower() for w in _WORD.findall(text)]


# --- overlap with the reference ---------------------------------------------------------------------
def bleu(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1 and BLEU-4 in [0, 1] (one reference per hypothesis)."""
    from sacrebleu.metrics import BLEU

    _check_pairs(hyps, refs)
    out = {}
    for key, order in (("bleu1", 1), ("bleu4", 4)):
        # max_ngram_order=1: the geometric mean has one term, so the score is exactly BP × p1
        score = BLEU(lowercase=True, max_ngram_order=order).corpus_score(list(hyps), [list(refs)])
        out[key] = score.score / 100.0
    return out


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs, Porter stemming on."""
    from rouge_score import rouge_scorer

    _check_pairs(hyps, refs)
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    sums = dict.fromkeys(keys, 0.0)
    for h, r in zip(hyps, refs):
        s = scorer.score(r, h)  # (target, prediction)
        for k in keys:
            sums[k] += s[k].fmeasure
    return {k: v / len(hyps) for k, v in sums.items()}


def embedding_similarity(hyps: Sequence[str], refs: Sequence[str], encoder: Encoder) -> float:
    """Mean cosine between each hypothesis and its reference; one ``encoder.encode`` call for both."""
    _check_pairs(hyps, refs)
    n = len(hyps)
    emb = np.asarray(encoder.encode(list(hyps) + list(refs)), dtype=np.float64).reshape(2 * n, -1)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return float((emb[:n] * emb[n:]).sum(1).mean())


# --- diversity and length ---------------------------------------------------------------------------
def unique_sentence_ratio(texts: Sequence[str]) -> float:
    return len({" ".join(words(t)) for t in texts}) / len(texts)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over ``texts`` (0 when no text has n words)."""
    grams = [tuple(ws[i:i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_length(texts: Sequence[str]) -> float:
    return float(np.mean([len(words(t)) for t in texts]))


# --- grounding in the item ---------------------------------------------------------------------------
# Extra surface forms for ML-100K genres beyond the generic ones (see genre_pattern). Kept short on
# purpose: each is a phrase a reader would take as naming that genre.
GENRE_ALIASES: dict[str, tuple[str, ...]] = {
    "sci-fi": ("science fiction", "science-fiction"),
    "children's": ("kids", "kid's", "kids'"),
    "film-noir": ("noir",),
    "animation": ("animated",),
    "romance": ("romantic",),
}


@functools.lru_cache(maxsize=None)
def genre_pattern(genre: str) -> re.Pattern:
    """A case-insensitive word-boundary pattern for one genre/category name.

    Surface forms: the name; the name with its hyphens as a space or removed ("Sci-Fi" → "sci fi",
    "scifi"); without a possessive ("Children's" → "children", "childrens"); a plural of the last
    word (+s, y → ies: "comedies", "mysteries", "westerns"); plus :data:`GENRE_ALIASES`. Curly
    apostrophes count as straight ones. Boundaries: no letter or digit directly before or after.
    """
    base = genre.strip().lower().replace("’", "'")
    forms = {base, base.replace("-", " "), base.replace("-", "")}
    forms |= {f.replace("'s", "").replace("'", "") for f in list(forms)}
    forms |= {f.replace("'s", "s") for f in list(forms)}
    plurals = set()
    for f in forms:
        if f[-1:].isalpha() and not f.endswith("s"):
            plurals.add(f[:-1] + "ies" if f.endswith("y") and f[-2:-1] not in "aeiou" else f + "s")
    forms |= plurals | set(GENRE_ALIASES.get(base, ()))
    alts = sorted((re.escape(f).replace("'", "['’]").replace(r"\ ", r"\s+") for f in forms if f),
                  key=len, reverse=True)
    return re.compile(r"(?<![^\W_])(?:" + "|".join(alts) + r")(?![^\W_])", re.I)


def mentions_genre(text: str, genres: str) -> bool:
    """Whether ``text`` names any of ``genres`` ("A|B" as in the items table; "" names nothing)."""
    return any(genre_pattern(g).search(text) for g in genres.split("|") if g.strip())


def is_hallucinated(named: list[set[int]], item_id: int, shown: Iterable[int]) -> bool:
    """Whether any named catalogue title is neither the item nor in ``shown``, the history the prompt
    showed (``grounding_score``'s count)."""
    allowed = {int(i) for i in shown} | {int(item_id)}
    _, _, n_bad = grounding_score(named, 0, allowed, QualityConfig())
    return n_bad > 0


def shown_of(record: Mapping) -> list[int]:
    """The history the record's prompt showed: ``shown`` if the record has it, else ``history``."""
    return [int(i) for i in (record["shown"] if "shown" in record else record["history"])]


# --- prompt copying, self-reference, unfinished text (the simulator's rules, as rates) -------------
def prompt_copy_rate(records: Sequence[Mapping], items: pd.DataFrame, titles: TitleIndex | None = None,
                     threshold: float = QualityConfig().copy_ok) -> float:
    """Share of ``records`` (``text``, ``item_id``, ``shown``/``history``) whose text copies more than
    ``threshold`` of its words from the prompt's item lines (:func:`~shielded_recrl.trainer.quality.prompt_copy`)."""
    titles = titles if titles is not None else TitleIndex(items)
    rows = {int(r["item_id"]): r for r in items.to_dict("records")}
    copied = []
    for r in records:
        lines = prompt_item_lines([rows[i] for i in shown_of(r)] + [rows[int(r["item_id"])]])
        copied.append(prompt_copy(str(r["text"]), lines, titles, QualityConfig().copy_n) > threshold)
    return float(np.mean(copied)) if copied else 0.0


def self_reference_rate(records: Sequence[Mapping], titles: TitleIndex) -> float:
    """Share of ``records`` whose text names the recommended item as a reason
    (:func:`~shielded_recrl.trainer.quality.self_reference`)."""
    refs = [self_reference(str(r["text"]), int(r["item_id"]), shown_of(r), titles) for r in records]
    return float(np.mean(refs)) if refs else 0.0


def unfinished_rate(texts: Sequence[str]) -> float:
    """Share of ``texts`` that do not end a sentence (:func:`~shielded_recrl.trainer.quality.is_unfinished`)."""
    return float(np.mean([is_unfinished(str(t)) for t in texts])) if len(texts) else 0.0


# --- the record-level entry points -----------------------------------------------------------------
def explanation_metrics(records: Sequence[Mapping], items: pd.DataFrame, encoder: Encoder,
                        titles: TitleIndex | None = None) -> dict[str, float]:
    """All metrics (the keys of :data:`METRIC_KEYS`) over explanations.jsonl rows of **one** system.

    ``records``: dicts with at least ``text`` (the hypothesis), ``reference``, ``item_id`` and
    ``history``, and ``shown`` (the history items the prompt showed: what the explanation may name
    besides the item; without it ``history`` is taken to be that). ``items``: the catalogue
    (``item_id``, ``title``, ``genres``). ``titles``: a prebuilt ``TitleIndex(items)`` to share
    between calls (built here when ``None``). Raises ValueError on no records, a record missing a
    key, records of several systems, or an item id absent from ``items``.
    """
    if not records:
        raise ValueError("explanation_metrics needs at least one record; found none")
    for k, r in enumerate(records):
        missing = [key for key in RECORD_KEYS if key not in r]
        if missing:
            raise ValueError(f"record {k} lacks {missing}; explanations.jsonl rows carry {list(RECORD_KEYS)}")
    systems = {r.get("system") for r in records}
    if len(systems) > 1:
        raise ValueError(f"records of one system expected (metrics of a mixture mean nothing); "
                         f"found {sorted(map(str, systems))}")
    titles = titles if titles is not None else TitleIndex(items)
    genres_of = dict(zip(items["item_id"].astype(int), items["genres"].fillna("").astype(str)))
    unknown_items = sorted({int(r["item_id"]) for r in records} - genres_of.keys())
    if unknown_items:
        raise ValueError(f"item ids {unknown_items[:5]} are not in the items table")

    hyps = [str(r["text"]) for r in records]
    refs = [str(r["reference"]) for r in records]
    match, halluc = [], []
    for r, text in zip(records, hyps):
        named, _, masked = titles.find(text)  # masked: each named title replaced by "the film"
        match.append(mentions_genre(masked, genres_of[int(r["item_id"])]))
        halluc.append(is_hallucinated(named, r["item_id"], shown_of(r)))

    out: dict[str, float] = {}
    out.update(bleu(hyps, refs))
    out.update(rouge(hyps, refs))
    out["embed_sim"] = embedding_similarity(hyps, refs, encoder)
    out["usr"] = unique_sentence_ratio(hyps)
    out["distinct1"] = distinct_n(hyps, 1)
    out["distinct2"] = distinct_n(hyps, 2)
    out["feature_match"] = float(np.mean(match))
    out["hallucination_rate"] = float(np.mean(halluc))
    out["prompt_copy_rate"] = prompt_copy_rate(records, items, titles)
    out["self_reference_rate"] = self_reference_rate(records, titles)
    out["unfinished_rate"] = unfinished_rate(hyps)
    out["mean_len"] = mean_length(hyps)
    out["n"] = len(records)
    return {k: out[k] for k in METRIC_KEYS}


def by_source(records: Sequence[Mapping], items: pd.DataFrame, encoder: Encoder,
              titles: TitleIndex | None = None) -> dict[str, dict[str, float]]:
    """:func:`explanation_metrics` per ``reference_source`` ('template', 'review', …), sources sorted."""
    if not records:
        raise ValueError("by_source needs at least one record; found none")
    groups: dict[str, list[Mapping]] = defaultdict(list)
    for k, r in enumerate(records):
        if "reference_source" not in r:
            raise ValueError(f"record {k} lacks 'reference_source'")
        groups[str(r["reference_source"])].append(r)
    titles = titles if titles is not None else TitleIndex(items)
    return {src: explanation_metrics(groups[src], items, encoder, titles) for src in sorted(groups)}


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) == 0 or len(hyps) != len(refs):
        raise ValueError(f"one reference per hypothesis and at least one pair expected; found "
                         f"{len(hyps)} hypotheses, {len(refs)} references")
