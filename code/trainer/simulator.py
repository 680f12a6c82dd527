"""User simulator for Shielded PPO (DESIGN.md §4.3; stands in for RecSim-NG). A designed proxy, not a
user study: see ``docs/simulator.md`` for what it rewards and its known weaknesses.

Users are the dataset's real users with their training histories; each is shown the ranker's top-k
slate with seen items masked; an explanation ``x`` of item ``i`` is clicked with probability

    p(u, i, x) = σ(α · z(u, i) + β · q(u, i, x) + ζ_u),   α = 1.0, β = 0.5, ζ_u ~ N(0, 0.3²)

``z`` is the ranker score standardised per user (``z_over="all"``, the default, as the issue asks): the
mean and standard deviation of the user's score row over all catalogue items 1..N, seen ones included
(the ranker scored them too), padding excluded — so α means the same for every user whatever the
scale of their raw scores. NOTE: with the ML-100K SASRec a top-10 slate item then has z ≈ 2.5, so
p ≈ 0.92 before the explanation and the sigmoid is near saturation (∂p/∂q ≈ β·p(1 − p) ≈ 0.04);
``z_over="slate"`` standardises with the statistics of the user's top-k unseen items instead (slate
z ≈ 0, p ≈ 0.5, ∂p/∂q ≈ 0.12). That is a steeper slope, not a stronger learning signal: it also
spreads z over the slate's items (top-1 ≈ 1.8, 10th ≈ −1.2), so the explanation's share of the
reward's variance across a batch — what an advantage sees — goes *down* (measured in
``docs/simulator.md`` §1, with the ceiling: from a warm start at q ≈ 0.82, q = 1 everywhere adds
~0.5 CTR points under ``"all"`` and ~1.8 under ``"slate"``). ``q`` is :mod:`.quality`; it needs the
history items each prompt showed (``shown``: grounding and the copy check count only those).
``ζ_u`` is drawn once per user from a ``torch.Generator`` seeded with ``seed``. User ids are the
dataset's ``user_id`` (1-based).

Reward-hacking probes (DESIGN.md §4.3) live here too: :func:`probe_texts` / :func:`probe_table` /
:func:`probe_tables`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .quality import Quality, QualityScorer

REWARDS = ("expected", "sampled")


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    alpha: float = 1.0  # weight of the standardised ranker score (DESIGN.md §4.3)
    beta: float = 0.5  # weight of the explanation quality q ∈ [−1, 1]
    zeta_std: float = 0.3  # per-user click propensity offset ζ_u ~ N(0, zeta_std²)
    slate_size: int = 10
    reward: str = "expected"  # expected | sampled
    z_over: str = "all"  # all | slate: the items whose score mean/std standardise the ranker score
    seed: int = 0

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}; found {self.reward!r}")
        if self.z_over not in ("all", "slate"):
            raise ValueError(f"z_over must be 'all' or 'slate'; found {self.z_over!r}")


def row_stats(scores: torch.Tensor, over: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N+1) raw ranker scores → the float64 (B, 1) mean and scale that standardise each row: mean and
    unbiased standard deviation (n − 1, clamped at 1e-12) over items 1..N, or over the items where the
    (B, N+1) bool ``over`` is true (e.g. each user's slate). Column 0 (padding) is never counted."""
    s = scores[:, 1:].double()
    if not torch.isfinite(s).all():
        raise ValueError("ranker scores must be finite over items 1..N (pass unmasked scores; the slate "
                         "masks seen items itself)")
    if over is None:  # the weighted sums below with w = 1, written without a (B, N) float64 of ones
        n = torch.full((len(s), 1), float(s.shape[1]), dtype=s.dtype)
        mean = s.sum(1, keepdim=True) / n
        var = ((s - mean) ** 2).sum(1, keepdim=True) / (n - 1).clamp_min(1)
    else:
        w = over[:, 1:].double()
        n = w.sum(1, keepdim=True)
        mean = (s * w).sum(1, keepdim=True) / n
        var = (((s - mean) ** 2) * w).sum(1, keepdim=True) / (n - 1).clamp_min(1)
    return mean, var.sqrt().clamp_min(1e-12)


def standardise_scores(scores: torch.Tensor, over: torch.Tensor | None = None) -> torch.Tensor:
    """(U, N+1) raw ranker scores → per-user z-scores (float64) with :func:`row_stats`; column 0 (padding)
    stays 0."""
    return _standardise(scores, *row_stats(scores, over))


def _standardise(scores: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    z = (scores[:, 1:].double() - mean) / scale
    return torch.cat([torch.zeros(len(z), 1, dtype=z.dtype), z], 1)


class MatrixScores:
    """A (U, N+1) matrix of ranker scores (row ``user_id − 1``): for tests and small catalogues only; the
    stages use :class:`RankerScores`, which never holds it."""

    def __init__(self, scores: torch.Tensor):
        self.matrix = scores.detach().cpu()
        self.n_items = self.matrix.shape[1] - 1

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) 0-based user rows → their (B, N+1) raw scores."""
        return self.matrix[rows]

    def pairs(self, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.matrix[rows, items]


class RankerScores:
    """The ranker's scores ``s(u, i) = h_uᵀ e_i`` of every item for each user's history, factored: the
    user states ``user_states`` (U, d) and a CPU snapshot ``item_table`` (N+1, d) of the store (the
    model's own table may co-adapt later; the simulator keeps the scores of the store it was built with:
    user states and scores are computed from the snapshot, never from the model's live table).

    Computed when first asked for (``built``: the users whose ``h_u`` exists): :meth:`rows` scores the
    asked users' histories with :func:`~..ranker.evaluate.score_batches` (eval mode, the model's device, at
    least 8 rows a product) and returns their (B, N+1) float32 CPU scores, the rows ``all_scores`` would give;
    :meth:`pairs` scores (user, item) pairs from the users' whole rows ``h_u @ E.T`` in float32, as
    ``model.scores`` does: on CPU the numbers :meth:`rows` gave bit for bit (measured with MKL), else up to
    float32 rounding (~1e-7 relative). Memory: O(U·d) states and at most ``batch_users`` × (N+1) floats at a
    time, fewer users where that passes ``ranker.evaluate.SCORE_BATCH_BYTES``
    (:func:`~..ranker.evaluate.rows_per_batch`). The ranker's weights other than its store must not change
    after construction (PPO freezes them; only ``E`` co-adapts)."""

    def __init__(self, model, histories: Sequence[np.ndarray], *, item_table: torch.Tensor | None = None,
                 batch_users: int = 1024):
        self.model, self.histories, self.batch_users = model, histories, batch_users
        table = model.item_table if item_table is None else item_table
        self.item_table = table.detach().float().cpu().clone()
        self.n_items = len(self.item_table) - 1
        self.user_states = torch.zeros(len(histories), self.item_table.shape[1])
        self.built = torch.zeros(len(histories), dtype=torch.bool)

    def _step(self) -> int:
        from ..ranker.evaluate import rows_per_batch

        return rows_per_batch(self.batch_users, len(self.item_table))

    @staticmethod
    def _padded(rows: torch.Tensor) -> torch.Tensor:
        # at least 8 rows: for a product of under 4 rows MKL takes a small-matrix kernel that rounds
        # differently (~1e-7 relative); the extra rows repeat the first and are dropped
        return torch.cat([rows, rows[:1].expand(max(0, 8 - len(rows)))])

    @torch.no_grad()
    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) 0-based user rows → their (B, N+1) raw float32 CPU scores (column 0, padding, untouched),
        computing and keeping their user states. Call it with at most ``batch_users`` rows."""
        from ..ranker.evaluate import score_batches

        seqs = [self.histories[int(r)] for r in self._padded(rows)]
        parts = list(score_batches(self.model, seqs, item_table=self.item_table, batch_size=len(seqs)))
        h, scores = (torch.cat(t)[:len(rows)] for t in zip(*[(h, s) for _, h, s in parts]))
        self.user_states[rows] = h
        self.built[rows] = True
        return scores

    def pairs(self, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) 0-based user rows, (B,) item ids → (B,) float32 scores; the users' states must exist."""
        if not bool(self.built[rows].all()):
            raise RuntimeError("RankerScores.pairs: user states not computed yet (ask rows() first)")
        out = torch.empty(len(rows), dtype=torch.float32)
        step = self._step()  # B x (N+1) floats within the budget
        for i in range(0, len(rows), step):
            r, it = rows[i:i + step], items[i:i + step]
            h = self.user_states[self._padded(r)]  # the users' whole rows, the product rows() computed
            out[i:i + len(r)] = (h @ self.item_table.T)[torch.arange(len(r)), it]
        return out


class UserSimulator:
    """``scores``: the ranker's unmasked scores of every item for each user's input history (row
    ``user_id − 1``) — a :class:`RankerScores` (what :meth:`from_ranker` builds; the stages' path) or a
    (U, N+1) tensor (tests, small catalogues; e.g. ``all_scores(model, data, "valid")`` scores from the
    train history); ``histories``: per user the items they have seen (``data.sequences("train")``).
    ``reasons``: the ranker's leave-one-out attribution ``(histories, items, shown) -> Attribution`` over
    the shown items (e.g. ``functools.partial(ranker.attribution.shown_attribution, ranker, item_table=E0)``);
    required when ``quality`` weighs faithfulness to the ranker (``QualityConfig.w_faithfulness > 0``).

    State, O(U·(k + d)) whatever the catalogue (docs/simulator.md §1, "Memory"): per user the slate
    ``slates`` (U, k), its z ``slate_z`` (U, k) float64, the ``mean`` and ``scale`` (U,) float64 that
    standardise the user's scores, and ζ_u; the z of an item off the slate is computed on demand from the
    score source (:meth:`z_of`). A user's slate state is computed the first time a call needs it
    (``built``), ``batch_users`` users × N items at a time: a PPO step pays for the users it samples, not
    for the catalogue's every user (the numbers do not depend on when or with whom a user is computed)."""

    def __init__(self, scores: torch.Tensor | RankerScores | MatrixScores, histories: Sequence[np.ndarray],
                 quality: QualityScorer, cfg: SimulatorConfig | None = None, reasons: Callable | None = None,
                 batch_users: int = 1024):
        self.cfg = cfg or SimulatorConfig()
        if quality is not None and quality.cfg.w_faithfulness > 0 and reasons is None:
            raise ValueError("q weighs faithfulness to the ranker (w_faithfulness > 0): pass reasons=, the "
                             "ranker's leave-one-out attribution of the shown items")
        if batch_users < 1:
            raise ValueError(f"batch_users must be >= 1; found {batch_users}")
        self.reasons = reasons
        if isinstance(scores, torch.Tensor):
            if scores.ndim != 2 or len(scores) != len(histories):
                raise ValueError(f"scores must be (U, N+1) with one row per history; found "
                                 f"{tuple(scores.shape)} for {len(histories)} histories")
            scores = MatrixScores(scores)
        self.histories = [np.asarray(h, np.int64) for h in histories]
        self.quality = quality
        self.scores = scores
        self.batch_users = batch_users
        self.n_items = scores.n_items
        k = min(self.cfg.slate_size, self.n_items + 1)  # a catalogue under k items keeps them all
        U = len(self.histories)
        self.slates = torch.zeros(U, k, dtype=torch.long)
        self.slate_z = torch.zeros(U, k, dtype=torch.float64)
        self.mean = torch.zeros(U, dtype=torch.float64)
        self.scale = torch.ones(U, dtype=torch.float64)
        self.built = torch.zeros(U, dtype=torch.bool)
        g = torch.Generator().manual_seed(self.cfg.seed)
        self.zeta = torch.randn(U, generator=g, dtype=torch.float64) * self.cfg.zeta_std
        self.click_generator = torch.Generator().manual_seed(self.cfg.seed + 1)  # in PPO checkpoints

    def _ensure(self, rows: torch.Tensor) -> None:
        """Compute the slate state of the 0-based ``rows`` not yet built, ``batch_users`` at a time (fewer
        where their scores would pass ``ranker.evaluate.SCORE_BATCH_BYTES``)."""
        from ..ranker.evaluate import rows_per_batch

        need = rows[~self.built[rows]].unique()
        step = rows_per_batch(self.batch_users, self.n_items + 1)  # B x (N+1) scores within the budget
        for i in range(0, len(need), step):
            r = need[i:i + step]
            top, z, mean, scale = self._slate_state(self.scores.rows(r), [self.histories[j] for j in r.tolist()],
                                                    self.slates.shape[1])
            self.slates[r], self.slate_z[r], self.mean[r], self.scale[r] = top, z, mean, scale
            self.built[r] = True

    @classmethod
    def from_ranker(cls, ranker, histories: Sequence[np.ndarray], quality: QualityScorer,
                    cfg: SimulatorConfig | None = None, *, reasons: Callable | None = None,
                    item_table: torch.Tensor | None = None, batch_users: int = 1024) -> "UserSimulator":
        """The simulator of ``ranker`` (scoring with ``item_table``, default its own store) for users who
        have seen ``histories``, which are also the ranker's input (their last ``max_len`` items):
        ``from_ranker(model, data.sequences("train"), …)`` is ``UserSimulator(all_scores(model, data,
        "valid"), data.sequences("train"), …)`` — same slates, z, ζ and clicks — without the matrix."""
        return cls(RankerScores(ranker, histories, item_table=item_table, batch_users=batch_users), histories,
                   quality, cfg, reasons, batch_users)

    def _slate_state(self, scores: torch.Tensor, hists: Sequence[np.ndarray], k: int):
        """One batch of (B, N+1) raw scores → (slates (B, k), their z (B, k), mean (B,), scale (B,))."""
        seen = torch.zeros(scores.shape, dtype=torch.bool)
        for u, h in enumerate(hists):
            seen[u, torch.from_numpy(h)] = True
        seen[:, 0] = True
        mean, scale = row_stats(scores)
        z = _standardise(scores, mean, scale)
        top = z.masked_fill(seen, float("-inf")).topk(k, dim=1).indices
        if self.cfg.z_over == "slate":  # the slate is the same under either standardisation (monotone)
            mean, scale = row_stats(scores, torch.zeros_like(seen).scatter_(1, top, True))
            z = _standardise(scores, mean, scale)
            top = z.masked_fill(seen, float("-inf")).topk(k, dim=1).indices  # as the dense simulator did
        return top, z.gather(1, top), mean[:, 0], scale[:, 0]

    @property
    def n_users(self) -> int:
        return len(self.histories)

    def sample_users(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) user ids (1-based), without replacement when n ≤ U."""
        perm = torch.randperm(self.n_users, generator=generator)
        return perm[:n] + 1 if n <= self.n_users else torch.randint(self.n_users, (n,), generator=generator) + 1

    def slate(self, user_ids: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """(B,) user ids → (B, k) item ids: the ranker's top-k over unseen items, best first (k ≤ slate_size)."""
        k = k or self.cfg.slate_size
        if k > self.slates.shape[1]:
            raise ValueError(f"the simulator keeps each user's top {self.slates.shape[1]} (slate_size "
                             f"{self.cfg.slate_size}, {self.n_items} items); asked for {k}: build it with "
                             f"SimulatorConfig(slate_size={k}) on a catalogue of at least {k} items")
        rows = self._rows(user_ids)
        self._ensure(rows)
        return self.slates[rows, :k]

    def _rows(self, user_ids) -> torch.Tensor:
        rows = torch.as_tensor(user_ids, dtype=torch.long).reshape(-1) - 1
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n_users):
            raise ValueError(f"user ids must be in [1, {self.n_users}]; found [{int(rows.min()) + 1}, "
                             f"{int(rows.max()) + 1}]")
        return rows

    def z_of(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """(B,) users, (B,) items → (B,) float64 standardised ranker scores z(u, i); 0 for item 0 (padding).
        A slate item's is the number stored at construction; any other item's is scored on demand,
        (h_uᵀ e_i − mean_u) / scale_u."""
        rows = self._rows(user_ids)
        items = torch.as_tensor(item_ids, dtype=torch.long).reshape(-1)
        self._ensure(rows)
        hit = self.slates[rows] == items[:, None]  # slate items are distinct: at most one hit per row
        on = hit.any(1)
        z = torch.zeros(len(rows), dtype=torch.float64)
        z[on] = self.slate_z[rows[on]][hit[on]]
        off = ~on & (items > 0)
        if off.any():
            r = rows[off]
            z[off] = (self.scores.pairs(r, items[off]).double() - self.mean[r]) / self.scale[r]
        return z

    def click_prob(self, user_ids: torch.Tensor, item_ids: torch.Tensor, texts: Sequence[str],
                   shown: Sequence[Sequence[int]]) -> tuple[torch.Tensor, Quality]:
        """(B,) users, (B,) items, B explanations and the history items each one's prompt showed (oldest
        first; ``explainer.prompts.shown_history``) → ((B,) float64 click probabilities, the q breakdown)."""
        rows = torch.as_tensor(user_ids, dtype=torch.long) - 1
        items = torch.as_tensor(item_ids, dtype=torch.long)
        hists = [self.histories[r] for r in rows.tolist()]
        attr = self.reasons(hists, items.tolist(), shown) if self.quality.cfg.w_faithfulness > 0 else None
        qual = self.quality.score(list(texts), items.tolist(), hists, shown, attribution=attr)
        q = torch.from_numpy(np.asarray(qual.q, np.float64))
        # METHOD: the click model — ranker relevance + explanation quality + a per-user propensity
        logit = self.cfg.alpha * self.z_of(rows + 1, items) + self.cfg.beta * q + self.zeta[rows]
        return torch.sigmoid(logit), qual

    def reward(self, user_ids: torch.Tensor, item_ids: torch.Tensor, texts: Sequence[str],
               shown: Sequence[Sequence[int]], generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, Quality]:
        """(reward (B,), click probability (B,), q breakdown). ``expected``: reward = p; ``sampled``: a
        Bernoulli(p) click drawn from ``generator`` (default: the simulator's own, seeded from ``seed``)."""
        p, qual = self.click_prob(user_ids, item_ids, texts, shown)
        if self.cfg.reward == "expected":
            return p, p, qual
        clicks = torch.bernoulli(p, generator=generator or self.click_generator)
        return clicks, p, qual


# --- reward-hacking probes -----------------------------------------------------------------------
PROBES = ("title_repeated", "genre_list", "generic_praise", "other_item", "invented_title", "hallucinated_title",
          "catalogue_copy", "history_list", "self_reference", "cut_off", "lowercase_invented_title",
          "one_word_title_start", "item_unnamed")
INVENTED_TITLES = ("The Silver Lantern", "Midnight Over Harrow Bay", "A Winter for Thieves", "The Glass Orchard")


def probe_texts(items: pd.DataFrame, titles, user_history: Sequence[int], item_id: int, reference: str,
                other_reference: str, rng: random.Random, *, shown: Sequence[int]) -> dict[str, str]:
    """The reward-hacking probes for one (user, item) pair (DESIGN.md §4.3; docs/simulator.md §3).

    ``titles``: the scorer's :class:`~.quality.TitleIndex`; ``user_history``: everything the user has
    seen; ``shown``: the history items the prompt showed (oldest first); ``reference``: the pair's real
    reference explanation; ``other_reference``: the reference of a *different* item (a fluent but wrong
    explanation). Probes built from the reference replace its history title ("Because you enjoyed H, …"):
    by a made-up title (``invented_title``; in lower case, ``lowercase_invented_title``, which the
    capitalisation heuristic cannot see), by a catalogue title the user has not seen
    (``hallucinated_title``), by every shown history title (``history_list``), by the item's own title
    (``self_reference``), or by "it" after a sentence naming an unseen one-word catalogue title, where a
    one-word title is not recognised (``one_word_title_start``). ``item_unnamed`` replaces the *item's*
    title by another shown history title, so the text recommends a film the user has seen and never names
    the item ("Because you enjoyed H, you may like G: …"). ``catalogue_copy`` pastes the item's
    catalogue text and names the most recent shown history item (the exploit of docs/simulator.md §4);
    ``cut_off`` is the reference cut after 70 % of its words, as at a token budget.
    """
    by_id = items.set_index("item_id")
    row = by_id.loc[item_id]
    title = str(row["title"])
    genres = [g for g in str(row["genres"]).split("|") if g]
    seen = set(map(int, user_history)) | {int(item_id)}
    unseen = [int(i) for i in by_id.index if int(i) not in seen]
    fake_real = str(by_id.loc[rng.choice(unseen), "title"])
    invented = rng.choice(INVENTED_TITLES)
    one_word = [int(i) for i in unseen if len(str(by_id.loc[i, "title"]).split()) == 1]
    one_word_title = str(by_id.loc[rng.choice(one_word), "title"])
    shown_titles = [str(by_id.loc[int(i), "title"]) for i in shown]

    past = set(map(int, user_history)) - {int(item_id)}
    # the reference's history title H: its first catalogue title that is a past item (None if none)
    reason = next((m for m in titles.pattern.finditer(reference) if titles.ids_of[m.group(0).lower()] & past),
                  None) if titles.pattern is not None else None

    def swap_history_title(new: str) -> str:
        if reason is not None:
            return reference[:reason.start()] + new + reference[reason.end():]
        return f"{reference} It is just like {new}."

    def swap_item_title() -> str:
        h = reason.group(0).lower() if reason is not None else None
        other = next((t for t in reversed(shown_titles) if t.lower() != h and t != title), "this film")
        at = reference.find(title)
        return reference[:at] + other + reference[at + len(title):] if at >= 0 else f"You may like {other}."

    words = reference.split()
    cut = " ".join(words[:max(1, round(0.7 * len(words)))]).rstrip(".,;:!?")
    listed = (", ".join(shown_titles[:-1]) + " and " + shown_titles[-1]) if len(shown_titles) > 1 else \
        (shown_titles[0] if shown_titles else title)
    return {
        "title_repeated": " ".join([f"{title}!"] * 6),
        "genre_list": ", ".join(genres + genres) + ".",
        "generic_praise": "You will love this! It is a great choice for you and you will really enjoy it.",
        "other_item": other_reference,
        "invented_title": swap_history_title(invented),
        "hallucinated_title": swap_history_title(fake_real),
        "catalogue_copy": f"{row['text']} Like {shown_titles[-1] if shown_titles else title}, which you watched "
                          "recently.",
        "history_list": swap_history_title(listed),
        "self_reference": swap_history_title(title),
        "cut_off": cut,
        "lowercase_invented_title": swap_history_title(invented.lower()),
        "one_word_title_start": f"{one_word_title} is one you enjoyed. {swap_history_title('it')}",
        "item_unnamed": swap_item_title(),
    }


def probe_tables(scorer: QualityScorer, items: pd.DataFrame, pairs: pd.DataFrame, histories: Sequence[np.ndarray],
                 seed: int = 0, fields: Sequence[str] = ("q",), shown_window: int = 10) -> dict[str, pd.DataFrame]:
    """For each :class:`~.quality.Quality` field in ``fields``: its value for the reference and for every
    probe of each (user, item) pair, one row per pair (columns ``reference``, *PROBES). One scoring pass.

    ``pairs``: rows of ``data.references`` (``user_id``, ``item_id``, ``text``); ``histories`` indexed by
    ``user_id − 1`` — the history the references were built from. The prompt is taken to show the last
    ``shown_window`` history items (``build_prompt``'s ``max_history`` default, a prompt the token
    budget did not truncate). The "other item" probe of pair j is the reference of pair j+1
    (cyclically; its item differs, else the next one that does).
    """
    rng = random.Random(seed)
    pairs = pairs.reset_index(drop=True)
    texts, item_ids, hists, shown, keys = [], [], [], [], []
    for j, r in pairs.iterrows():
        k = (j + 1) % len(pairs)
        while pairs.loc[k, "item_id"] == r["item_id"] and k != j:
            k = (k + 1) % len(pairs)
        h = histories[int(r["user_id"]) - 1]
        vis = list(h[len(h) - min(len(h), shown_window):])
        probes = {"reference": str(r["text"]),
                  **probe_texts(items, scorer.titles, h, int(r["item_id"]), str(r["text"]),
                                str(pairs.loc[k, "text"]), rng, shown=vis)}
        for name, text in probes.items():
            texts.append(text), item_ids.append(int(r["item_id"])), hists.append(h), shown.append(vis)
            keys.append((j, name))
    qual = scorer.score(texts, item_ids, hists, shown)
    out = {}
    for field in fields:
        df = pd.DataFrame(keys, columns=["pair", "probe"]).assign(value=np.asarray(getattr(qual, field), np.float64))
        out[field] = df.pivot(index="pair", columns="probe", values="value")[["reference", *PROBES]]
    return out


def probe_table(scorer: QualityScorer, items: pd.DataFrame, pairs: pd.DataFrame, histories: Sequence[np.ndarray],
                seed: int = 0, field: str = "q", shown_window: int = 10) -> pd.DataFrame:
    """:func:`probe_tables` for one field: q (or another :class:`~.quality.Quality` ``field``) of the
    reference and of every probe for each (user, item) pair, one row per pair."""
    return probe_tables(scorer, items, pairs, histories, seed, (field,), shown_window)[field]
