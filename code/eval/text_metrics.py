"""Explanation-quality metrics (DESIGN.md §5, "Explanations"). Pure functions over texts; no file I/O.

Every metric except ``mean_len`` and ``n`` is a fraction in [0, 1] (BLEU is sacrebleu's score / 100), so
one table can show them side by side. Hypothesis ``i`` is compared with reference ``i`` only.

**Reference-based metrics are computed on one reference source at a time, never pooled.** A dataset's test
references are either a sentence of the user's own review (``source=review``, Amazon Books) or a template
built from item metadata (``source=template``); the warm start is trained on those same templates, so
BLEU/ROUGE/embedding similarity against template references measure *template fidelity*, not agreement
with human text. :func:`explanation_metrics` refuses records of several sources; :func:`by_source` splits
them; :func:`reference_free_metrics` is what may be reported per system over all records.

Reference-based (:data:`REFERENCE_KEYS`):

==================  ================================================================================
key                 definition
==================  ================================================================================
``bleu1``           corpus BLEU with ``max_ngram_order=1`` (sacrebleu 2.x ``BLEU``): brevity penalty ×
                    clipped unigram precision, over all pairs at once; 13a tokenisation, lowercased
``bleu4``           corpus BLEU-4, sacrebleu defaults otherwise (``exp`` smoothing), lowercased. Both are
                    computed from summed per-pair sufficient statistics (:func:`bleu_statistics`), which
                    is exactly how sacrebleu's ``corpus_score`` computes them (tested to 1e-9)
``rouge1/2/L``      mean over pairs of the ROUGE-1/2/L F1 (``rouge_score``, Porter stemming on)
``embed_sim``       mean over pairs of the cosine between the sentence embeddings of hypothesis and
                    reference under the injected sentence encoder (the offline MiniLM in evaluation;
                    rows re-normalised here). One vector per sentence, so this is *not* BERTScore (no
                    token-level alignment, no idf weighting)
==================  ================================================================================

Reference-free (:data:`REFERENCE_FREE_KEYS`):

==================  ================================================================================
``usr``             unique sentence ratio: distinct normalised hypotheses / hypotheses (normalised =
                    lowercased word tokens joined by one space, so case and punctuation do not count)
``distinct1/2``     distinct-n as Li et al. define it (2016, "A Diversity-Promoting Objective Function for
                    Neural Conversation Models", NAACL, §4.3): the number of distinct unigrams / bigrams
                    over all hypotheses divided by the total number of generated word tokens (not by
                    the number of n-grams), lowercased word tokens (:func:`words`)
``genre_mention``   share of explanations that mention at least one genre of their item (see
                    :func:`genre_pattern`), on the text with catalogue titles masked, so "Star Wars"
                    does not count as naming the genre War. A mention is a mention: "not a comedy"
                    counts and naming a wrong genre costs nothing (this was ``feature_match``; it is
                    **not** PETER's FMR, see below)
``genre_named_rate``  share of explanations naming (not negated, see below) at least one genre of the
                    dataset's genre vocabulary (every genre of the items table): the set that
                    ``genre_precision`` is averaged over
``genre_precision`` mean, over the explanations naming ≥ 1 genre, of (named genres that are the item's /
                    genres named); explanations naming none are left out (precision is undefined for
                    them; their share is 1 − ``genre_named_rate``). None when no explanation names one
``genre_recall``    mean, over the explanations whose item has ≥ 1 genre, of (item genres named / item
                    genres); an explanation naming none scores 0. None when no item has a genre
``hallucination_rate``  share of explanations naming a catalogue title (``TitleIndex.find``, the
                    simulator's matcher) that is neither the item nor in the history the prompt showed
                    (the record's ``shown``, see below); counted as in ``grounding_score``: a title
                    shared by several items is grounded if any of them is allowed. Title-like spans
                    outside the catalogue do not count here: see ``invented_title_rate``
``invented_title_rate``  share of explanations with a title-like span (two or more capitalised words,
                    ``TitleIndex.find``'s unknown spans) that names no catalogue title: a made-up film
                    ("Because you enjoyed The Black Lagoons"); a heuristic (docs/simulator.md §4: lower-
                    case and one-word inventions are missed, a person's name counts)
``prompt_copy_rate``  share of explanations whose ``quality.prompt_copy`` (share of words in a verbatim
                    copy of a prompt item line: the shown history's and the item's catalogue lines)
                    exceeds ``QualityConfig.copy_ok`` (0.2), the rate above which the simulator caps q
``self_reference_rate``  share of explanations naming the recommended item as a reason
                    (``quality.self_reference``: "Because you enjoyed X, you may like X")
``unfinished_rate`` share of explanations not ending a sentence (``quality.is_unfinished``)
``unnamed_item_rate``  share of explanations that never name the recommended item (``quality.names_item``)
``mean_len``        mean number of word tokens (``[\\w']+``) per hypothesis
``n``               number of records
==================  ================================================================================

Genres named (:func:`named_genres`, for precision and recall): every genre of the vocabulary whose
:func:`genre_pattern` matches the title-masked text; overlapping matches keep the longest span (so
"science fiction" is one genre, not also "fiction"). NOTE: a negated mention is not a naming: a match
preceded, within its clause (no ``.,;:!?()`` or "but" in between) and at most three words back, by a
negation cue (not, no, never, without, nor, neither, hardly, barely, a word ending in "n't") or directly by
"non-"/"non " is ignored — "not a comedy", "isn't really a comedy", "no horror here". Known limits of
this window rule: "not just a comedy" is read as a negation, and a negation further back ("I would never
call this anything but a comedy") is missed.

NOTE: PETER's feature matching ratio (FMR; Li, Zhang and Chen 2021, "Personalized Transformer for
Explainable Recommendation", ACL) is the share of explanations containing the ground-truth feature of the
user's review — an aspect extracted from the review (Sentires). No dataset here carries such a feature:
``data/proc/<D>/references.parquet`` holds the review sentence itself (``text``, ``source=review``) but no
extracted aspect, and code/dataset extracts none. FMR proper is therefore not computed; the genre metrics
above match catalogue genres, not review aspects.

The prompt-visible history: a record's ``shown`` (the history items the prompt showed,
``explainer.prompts.shown_history(history, prompt.n_history)``) when it has one, else its ``history``,
which must then hold only what the prompt showed. Counting against the user's whole history would
let a film the prompt never showed pass as grounded.

Paired bootstrap (code/eval/compare.py): :func:`text_stats` keeps per-explanation sufficient statistics
(:class:`TextStats`) and :func:`stats_metrics` recomputes the resampled metrics from them with weights
(how often each record is drawn), so a resample never re-tokenises, re-scores or re-encodes a text.
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..trainer.quality import (Encoder, QualityConfig, TitleIndex, grounding_score, is_unfinished, names_item,
                               prompt_copy, prompt_item_lines, self_reference)

REFERENCE_KEYS = ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "embed_sim")
REFERENCE_FREE_KEYS = ("usr", "distinct1", "distinct2", "genre_mention", "genre_named_rate", "genre_precision",
                       "genre_recall", "hallucination_rate", "invented_title_rate", "prompt_copy_rate",
                       "self_reference_rate",
                       "unfinished_rate", "unnamed_item_rate", "mean_len", "n")
METRIC_KEYS = REFERENCE_KEYS + REFERENCE_FREE_KEYS
# the metrics :func:`stats_metrics` recomputes from per-explanation statistics (what the bootstrap resamples)
RESAMPLED_KEYS = REFERENCE_KEYS + ("distinct1", "distinct2", "genre_mention", "genre_named_rate", "genre_precision",
                                   "genre_recall")
RECORD_KEYS = ("text", "reference", "item_id", "history")

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    """Lowercased word tokens (letters, digits, apostrophes), the unit of USR, distinct-n and length."""
    return [w.lower() for w in _WORD.findall(text)]


# --- overlap with the reference ---------------------------------------------------------------------
def _bleu4():
    from sacrebleu.metrics import BLEU

    return BLEU(lowercase=True)  # max_ngram_order 4, exp smoothing: the defaults


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1 and BLEU-4 in [0, 1] (one reference per hypothesis), by sacrebleu's ``corpus_score``."""
    from sacrebleu.metrics import BLEU

    _check_pairs(hyps, refs)
    out = {}
    for key, order in (("bleu1", 1), ("bleu4", 4)):
        # max_ngram_order=1: the geometric mean has one term, so the score is exactly BP × p1
        score = BLEU(lowercase=True, max_ngram_order=order).corpus_score(list(hyps), [list(refs)])
        out[key] = score.score / 100.0
    return out


def bleu_statistics(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(n, 10) int64 per-pair BLEU sufficient statistics, sacrebleu's own segment statistics for BLEU-4
    lowercased: [hypothesis length, reference length, matches n = 1..4, hypothesis n-grams n = 1..4].

    Corpus BLEU is a function of their column sums only, so any reweighting of the pairs (a bootstrap
    resample) is scored exactly by :func:`bleu_from_statistics` of the weighted sum. BLEU-1's statistics
    are columns 0, 1, 2 and 6 (same tokenisation, same clipped unigram counts)."""
    _check_pairs(hyps, refs)
    # sacrebleu documents _extract_corpus_statistics for "faster re-computations esp. during statistical
    # tests"; the test suite checks its sums against corpus_score
    stats = _bleu4()._extract_corpus_statistics(list(hyps), [list(refs)])
    return np.asarray(stats, dtype=np.int64).reshape(len(hyps), 10)


def bleu_from_statistics(total: Sequence[float]) -> dict[str, float]:
    """BLEU-1 and BLEU-4 in [0, 1] from summed :func:`bleu_statistics` (10 numbers)."""
    from sacrebleu.metrics import BLEU

    t = [int(round(float(x))) for x in total]
    sys_len, ref_len = t[0], t[1]
    b4 = BLEU.compute_bleu(t[2:6], t[6:10], sys_len, ref_len, smooth_method="exp", max_ngram_order=4)
    b1 = BLEU.compute_bleu(t[2:3], t[6:7], sys_len, ref_len, smooth_method="exp", max_ngram_order=1)
    return {"bleu1": b1.score / 100.0, "bleu4": b4.score / 100.0}


def rouge_pairs(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(n, 3) ROUGE-1/2/L F1 of each pair, Porter stemming on."""
    from rouge_score import rouge_scorer

    _check_pairs(hyps, refs)
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    out = np.empty((len(hyps), 3))
    for i, (h, r) in enumerate(zip(hyps, refs)):
        s = scorer.score(r, h)  # (target, prediction)
        out[i] = [s[k].fmeasure for k in keys]
    return out


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs, Porter stemming on."""
    return dict(zip(("rouge1", "rouge2", "rougeL"), map(float, rouge_pairs(hyps, refs).mean(0))))


def embedding_cosines(hyps: Sequence[str], refs: Sequence[str], encoder: Encoder) -> np.ndarray:
    """(n,) cosine between each hypothesis's and its reference's sentence embedding; one ``encode`` call."""
    _check_pairs(hyps, refs)
    n = len(hyps)
    emb = np.asarray(encoder.encode(list(hyps) + list(refs)), dtype=np.float64).reshape(2 * n, -1)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return (emb[:n] * emb[n:]).sum(1)


def embedding_similarity(hyps: Sequence[str], refs: Sequence[str], encoder: Encoder) -> float:
    """Mean over pairs of the sentence-embedding cosine (:func:`embedding_cosines`)."""
    return float(embedding_cosines(hyps, refs, encoder).mean())


class CachedEncoder:
    """An encoder that encodes each distinct text once (templates and references repeat across systems and
    metrics); returns what the wrapped encoder returns for it."""

    def __init__(self, encoder: Encoder):
        self.encoder, self.cache = encoder, {}

    def encode(self, texts):
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            for t, v in zip(new, np.asarray(self.encoder.encode(new), dtype=np.float64).reshape(len(new), -1)):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])


# --- diversity and length ---------------------------------------------------------------------------
def unique_sentence_ratio(texts: Sequence[str]) -> float:
    return len({" ".join(words(t)) for t in texts}) / len(texts)


def _ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Li et al. (2016)'s distinct-n: distinct n-grams over all ``texts`` / total word tokens of ``texts``
    (0 when the texts have no words)."""
    toks = [words(t) for t in texts]
    n_words = sum(map(len, toks))
    return len({g for ws in toks for g in _ngrams(ws, n)}) / n_words if n_words else 0.0


def ngram_presence(texts: Sequence[str], n: int):
    """(len(texts), V) boolean scipy CSR matrix: which of the V distinct n-grams each text contains."""
    from scipy import sparse

    vocab: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for i, t in enumerate(texts):
        for g in set(_ngrams(words(t), n)):
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    return sparse.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(len(texts), len(vocab)))


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


def split_genres(genres: str) -> list[str]:
    """"A|B" (the items table's ``genres``) → ["A", "B"]; "" → []."""
    return [g.strip() for g in str(genres or "").split("|") if g.strip()]


def genre_vocabulary(items: pd.DataFrame) -> tuple[str, ...]:
    """Every genre of the items table (sorted): what an explanation can be found to name."""
    return tuple(sorted({g for s in items["genres"].fillna("").astype(str) for g in split_genres(s)}))


def mentions_genre(text: str, genres: str) -> bool:
    """Whether ``text`` mentions any of ``genres`` ("A|B" as in the items table; "" names nothing), negated
    or not (the ``genre_mention`` rule)."""
    return any(genre_pattern(g).search(text) for g in split_genres(genres))


_NEGATION_WORDS = frozenset({"not", "no", "never", "without", "nor", "neither", "hardly", "barely"})
_CLAUSE_BREAK = re.compile(r"[.,;:!?()]|\bbut\b", re.I)
NEGATION_WINDOW = 3  # words before a genre match searched for a negation cue (see the module docstring)


def _negated(text: str, start: int) -> bool:
    before = text[:start].replace("’", "'")
    if re.search(r"non[-\s]$", before, re.I):  # "non-fiction" when "Non-Fiction" is no genre of its own
        return True
    clause = _CLAUSE_BREAK.split(before)[-1]
    cues = words(clause)[-NEGATION_WINDOW:]
    return any(w in _NEGATION_WORDS or w.endswith("n't") for w in cues)


def named_genres(text: str, vocabulary: Iterable[str]) -> tuple[set[str], set[str]]:
    """(genres named, genres mentioned only negated) of ``vocabulary`` in ``text`` (title-masked text).

    Overlapping matches of different genres keep the longest span; a match after a negation cue in its
    clause (module docstring) is a negated mention, not a naming. A genre named once affirmatively is
    named, whatever its other mentions."""
    spans = [(m.start(), m.end(), g) for g in vocabulary for m in genre_pattern(g).finditer(text)]
    spans.sort(key=lambda s: (s[0] - s[1], s[0]))  # longest first, then leftmost
    kept: list[tuple[int, int, str]] = []
    for a, b, g in spans:
        if all(b <= ka or a >= kb for ka, kb, _ in kept):
            kept.append((a, b, g))
    named = {g for a, _, g in kept if not _negated(text, a)}
    return named, {g for _, _, g in kept} - named


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


def invented_title_rate(records: Sequence[Mapping], titles: TitleIndex) -> float:
    """Share of ``records`` whose text names a title-like span that is no catalogue title
    (:meth:`~shielded_recrl.trainer.quality.TitleIndex.find`'s unknown spans; ``Quality.n_unknown`` > 0)."""
    invented = [bool(titles.find(str(r["text"]))[1]) for r in records]
    return float(np.mean(invented)) if invented else 0.0


def unfinished_rate(texts: Sequence[str]) -> float:
    """Share of ``texts`` that do not end a sentence (:func:`~shielded_recrl.trainer.quality.is_unfinished`)."""
    return float(np.mean([is_unfinished(str(t)) for t in texts])) if len(texts) else 0.0


def unnamed_item_rate(records: Sequence[Mapping], titles: TitleIndex) -> float:
    """Share of ``records`` whose text never names the recommended item
    (:func:`~shielded_recrl.trainer.quality.names_item`)."""
    miss = [not names_item(str(r["text"]), int(r["item_id"]), titles) for r in records]
    return float(np.mean(miss)) if miss else 0.0


# --- per-explanation statistics (what the paired bootstrap resamples) ----------------------------------
class TextStats(NamedTuple):
    """Per-explanation statistics of one system's records; row ``i`` is record ``i`` (n rows)."""

    keys: list[tuple[int, int]]  # (user_id, item_id) of each row: what pairs two systems' rows
    n_words: np.ndarray          # (n,) word tokens of the hypothesis (distinct-n's denominator)
    grams: tuple                 # (unigram, bigram) presence: scipy CSR bool (n, V1), (n, V2)
    genre: np.ndarray            # (n, 5): mentions an item genre; names ≥ 1 genre; precision (0 where none
                                 # named); item has ≥ 1 genre; recall (0 where the item has none)
    hallucinated: np.ndarray     # (n,) bool: names a title outside the shown history ∪ the item
    bleu: np.ndarray | None      # (n, 10) :func:`bleu_statistics`; None when built without an encoder
    rouge: np.ndarray | None     # (n, 3) ROUGE-1/2/L F1
    embed: np.ndarray | None     # (n,) sentence-embedding cosine to the reference


def _genre_row(masked: str, item_genres: str, vocabulary: tuple[str, ...]) -> list[float]:
    own = set(split_genres(item_genres))
    named, _ = named_genres(masked, vocabulary)
    hit = len(named & own)
    return [float(mentions_genre(masked, item_genres)), float(bool(named)), hit / len(named) if named else 0.0,
            float(bool(own)), hit / len(own) if own else 0.0]


def text_stats(records: Sequence[Mapping], items: pd.DataFrame, titles: TitleIndex | None = None,
               encoder: Encoder | None = None) -> TextStats:
    """:class:`TextStats` of one system's records (checked as in :func:`explanation_metrics`); with an
    ``encoder`` also the reference-based statistics, which need the records to share one reference source."""
    _validate(records, items, "text_stats", one_source=encoder is not None)
    titles = titles if titles is not None else TitleIndex(items)
    genres_of = dict(zip(items["item_id"].astype(int), items["genres"].fillna("").astype(str)))
    vocabulary = genre_vocabulary(items)
    hyps = [str(r["text"]) for r in records]
    genre, halluc = [], []
    for r, text in zip(records, hyps):
        named, _, masked = titles.find(text)  # masked: each named title replaced by "the film"
        genre.append(_genre_row(masked, genres_of[int(r["item_id"])], vocabulary))
        halluc.append(is_hallucinated(named, r["item_id"], shown_of(r)))
    ref = None
    if encoder is not None:
        refs = [str(r["reference"]) for r in records]
        ref = (bleu_statistics(hyps, refs), rouge_pairs(hyps, refs), embedding_cosines(hyps, refs, encoder))
    return TextStats(keys=[(int(r.get("user_id", -1)), int(r["item_id"])) for r in records],
                     n_words=np.array([len(words(t)) for t in hyps], dtype=np.float64),
                     grams=(ngram_presence(hyps, 1), ngram_presence(hyps, 2)),
                     genre=np.asarray(genre, dtype=np.float64).reshape(len(hyps), 5),
                     hallucinated=np.asarray(halluc, dtype=bool),
                     bleu=None if ref is None else ref[0], rouge=None if ref is None else ref[1],
                     embed=None if ref is None else ref[2])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def stats_metrics(stats: TextStats, weights: np.ndarray | None = None, chunk: int = 250) -> dict[str, np.ndarray]:
    """The :data:`RESAMPLED_KEYS` metrics (reference-based ones only when ``stats`` has them) under each row
    of ``weights`` (B, n): how many times each record is drawn (None: once each, B = 1). Returns (B,) arrays;
    NaN where a metric is undefined (``genre_precision`` with no naming explanation drawn).

    Exact for every metric: corpus BLEU from summed sufficient statistics; means and ratios of means as
    weighted sums; distinct-n counts an n-gram once if any drawn record has it, over the drawn records'
    total word count (duplicates add words, not distinct n-grams, as they would in a resampled corpus)."""
    n = len(stats.keys)
    w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1, n)
    total = w.sum(1)
    out: dict[str, np.ndarray] = {}
    if stats.bleu is not None:
        sums = w @ stats.bleu.astype(np.float64)  # integer counts, exact in float64
        scores = [bleu_from_statistics(row) for row in sums]
        out["bleu1"] = np.array([s["bleu1"] for s in scores])
        out["bleu4"] = np.array([s["bleu4"] for s in scores])
        rouge_ = (w @ stats.rouge) / total[:, None]
        out.update(rouge1=rouge_[:, 0], rouge2=rouge_[:, 1], rougeL=rouge_[:, 2])
        out["embed_sim"] = (w @ stats.embed) / total
    drawn = (w > 0).astype(np.float64)
    n_words = w @ stats.n_words
    for k, presence in zip((1, 2), stats.grams):
        pt = presence.T.tocsr().astype(np.float64)  # (V, n)
        distinct = np.concatenate([(pt @ drawn[a:a + chunk].T > 0).sum(0) for a in range(0, len(w), chunk)])
        out[f"distinct{k}"] = np.where(n_words > 0, distinct / np.maximum(n_words, 1.0), 0.0)
    g = w @ stats.genre
    out["genre_mention"] = g[:, 0] / total
    out["genre_named_rate"] = g[:, 1] / total
    out["genre_precision"] = _ratio(g[:, 2], g[:, 1])
    out["genre_recall"] = _ratio(g[:, 4], g[:, 3])
    return out


# --- the record-level entry points -----------------------------------------------------------------
def _validate(records: Sequence[Mapping], items: pd.DataFrame, who: str, one_source: bool) -> None:
    if not records:
        raise ValueError(f"{who} needs at least one record; found none")
    for k, r in enumerate(records):
        missing = [key for key in RECORD_KEYS if key not in r]
        if missing:
            raise ValueError(f"record {k} lacks {missing}; explanations.jsonl rows carry {list(RECORD_KEYS)}")
    systems = {r.get("system") for r in records}
    if len(systems) > 1:
        raise ValueError(f"records of one system expected (metrics of a mixture mean nothing); "
                         f"found {sorted(map(str, systems))}")
    sources = {r.get("reference_source") for r in records}
    if one_source and len(sources) > 1:
        raise ValueError(f"records of one reference source expected (reference-based metrics are never pooled "
                         f"over sources; use by_source); found {sorted(map(str, sources))}")
    unknown_items = sorted({int(r["item_id"]) for r in records} - set(items["item_id"].astype(int)))
    if unknown_items:
        raise ValueError(f"item ids {unknown_items[:5]} are not in the items table")


def _point(stats: TextStats) -> dict[str, float | None]:
    return {k: (None if math.isnan(v[0]) else float(v[0])) for k, v in stats_metrics(stats).items()}


def _free(records: Sequence[Mapping], stats: TextStats, items: pd.DataFrame, titles: TitleIndex) -> dict:
    hyps = [str(r["text"]) for r in records]
    return {"usr": unique_sentence_ratio(hyps), "hallucination_rate": float(np.mean(stats.hallucinated)),
            "invented_title_rate": invented_title_rate(records, titles),
            "prompt_copy_rate": prompt_copy_rate(records, items, titles),
            "self_reference_rate": self_reference_rate(records, titles), "unfinished_rate": unfinished_rate(hyps),
            "unnamed_item_rate": unnamed_item_rate(records, titles), "mean_len": mean_length(hyps), "n": len(records)}


def reference_free_metrics(records: Sequence[Mapping], items: pd.DataFrame,
                           titles: TitleIndex | None = None) -> dict[str, float | None]:
    """The :data:`REFERENCE_FREE_KEYS` metrics over one system's records, of any reference sources: what
    may be reported per system. Same inputs and errors as :func:`explanation_metrics` (no encoder)."""
    _validate(records, items, "reference_free_metrics", one_source=False)
    titles = titles if titles is not None else TitleIndex(items)
    stats = text_stats(records, items, titles)
    out = {**_point(stats), **_free(records, stats, items, titles)}
    return {k: out[k] for k in REFERENCE_FREE_KEYS}


def explanation_metrics(records: Sequence[Mapping], items: pd.DataFrame, encoder: Encoder,
                        titles: TitleIndex | None = None) -> dict[str, float | None]:
    """All metrics (the keys of :data:`METRIC_KEYS`) over explanations.jsonl rows of **one** system and
    **one** reference source (``reference_source``; records without one count as one source).

    ``records``: dicts with at least ``text`` (the hypothesis), ``reference``, ``item_id`` and
    ``history``, and ``shown`` (the history items the prompt showed: what the explanation may name
    besides the item; without it ``history`` is taken to be that). ``items``: the catalogue
    (``item_id``, ``title``, ``genres``). ``titles``: a prebuilt ``TitleIndex(items)`` to share
    between calls (built here when ``None``). Raises ValueError on no records, a record missing a
    key, records of several systems or of several reference sources, or an item id absent from ``items``.
    """
    _validate(records, items, "explanation_metrics", one_source=True)
    titles = titles if titles is not None else TitleIndex(items)
    stats = text_stats(records, items, titles, encoder)
    out = {**_point(stats), **_free(records, stats, items, titles)}
    return {k: out[k] for k in METRIC_KEYS}


def group_by_source(records: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Records per ``reference_source``, sources sorted; a record without one is an error."""
    groups: dict[str, list[Mapping]] = defaultdict(list)
    for k, r in enumerate(records):
        if "reference_source" not in r:
            raise ValueError(f"record {k} lacks 'reference_source'")
        groups[str(r["reference_source"])].append(r)
    return {src: groups[src] for src in sorted(groups)}


def by_source(records: Sequence[Mapping], items: pd.DataFrame, encoder: Encoder,
              titles: TitleIndex | None = None) -> dict[str, dict[str, float | None]]:
    """:func:`explanation_metrics` per ``reference_source`` ('template', 'review', …), sources sorted."""
    if not records:
        raise ValueError("by_source needs at least one record; found none")
    titles = titles if titles is not None else TitleIndex(items)
    return {src: explanation_metrics(rs, items, encoder, titles) for src, rs in group_by_source(records).items()}


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) == 0 or len(hyps) != len(refs):
        raise ValueError(f"one reference per hypothesis and at least one pair expected; found "
                         f"{len(hyps)} hypotheses, {len(refs)} references")
