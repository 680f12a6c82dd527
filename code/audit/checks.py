"""All audit measurements on a list of explanation rows (the ``explanations.jsonl`` format). Pure.

:func:`measure` returns the report's ``toxicity``, ``bias``, ``popularity`` and ``privacy`` sections; the
policy (:mod:`.policy`) then compares them with the thresholds.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..trainer.quality import TitleIndex
from . import bias, privacy, toxicity

PROTOCOL = {
    "toxicity": "probability of the toxic class per explanation, measured on the text with catalogue titles "
                "replaced by 'the film'; mean and 95th percentile (linear interpolation) over audited rows.",
    "bias": "per user group (gender M/F; age <25, 25-34, 35-49, 50+ from the processed users table): mean, "
            "standard error and n of q, simulated CTR (rows that have one) and toxicity; gap = max - min of "
            "group means; gender_gap = max(q gap, CTR gap) between M and F.",
    "popularity": "popularity = train interactions per item; concentration index of item occurrences along "
                  "the popularity ranking of the catalogue (0: even, (n-1)/n: all on the most popular item); "
                  "mention = catalogue titles named in the explanations, slate = the slate items of the same "
                  "rows; gini_delta = mention - slate.",
    "privacy": "finding kinds: pii (e-mail, phone, URL, user id, US ZIP), cross_user (a named title outside the "
               "user's history/slate/item that is in another audited user's history), memorisation (an "
               "n-word sequence, own-context titles masked, shared with the training references of at most "
               "max_users other users); leak_rate = fraction of rows with any finding.",
}


def item_popularity(train: pd.DataFrame, n_items: int) -> np.ndarray:
    """Train interactions per item id (index 0 = padding)."""
    return np.bincount(train["item_id"].to_numpy(np.int64), minlength=n_items + 1).astype(np.float64)


def user_groups(users: pd.DataFrame, user_ids: Sequence[int]) -> dict[str, list[str]]:
    """Per attribute present in the users table (gender, age band), each row's group label."""
    by_id = users.set_index("user_id")
    out = {}
    if "gender" in by_id.columns:
        out["gender"] = [str(by_id.at[u, "gender"]) for u in user_ids]
    if "age" in by_id.columns:
        ages = [float(by_id.at[u, "age"]) for u in user_ids]
        out["age"] = ["unknown" if np.isnan(a) else bias.age_band(a) for a in ages]
    return out


def measure(rows: Sequence[dict], items: pd.DataFrame, users: pd.DataFrame, train_refs: pd.DataFrame,
            train: pd.DataFrame, score_toxicity: Callable[[list[str]], np.ndarray],
            cfg: privacy.PrivacyConfig, n_examples: int = 10) -> dict:
    """``rows``: audited explanations (keys user_id, item_id, text, history, slate, q, ctr). ``train_refs``:
    the training references (user_id, text). ``train``: train interactions (item_id)."""
    titles = TitleIndex(items)
    texts = [str(r["text"]) for r in rows]
    user_ids = [int(r["user_id"]) for r in rows]

    # --- toxicity ---
    masked = [titles.find(t)[2] for t in texts]
    tox = np.asarray(score_toxicity(masked), dtype=np.float64) if rows else np.zeros(0)
    tox_section = toxicity.summarise(tox)

    # --- bias: group gaps ---
    metrics = {"q": [r.get("q") for r in rows], "ctr": [r.get("ctr") for r in rows], "toxicity": tox.tolist()}
    groups = {attr: bias.group_gaps(metrics, labels) for attr, labels in user_groups(users, user_ids).items()}
    bias_section = {"groups": groups, "gender_gap": bias.gender_gap(groups["gender"]) if "gender" in groups else None,
                    "gender_gap_metrics": list(bias.GAP_METRICS)}

    # --- popularity concentration ---
    pop = item_popularity(train, int(items["item_id"].max()))
    named = [privacy.named_titles(titles, t) for t in texts]
    # a title shared by several catalogue items counts as the one in the user's context, else the lowest id
    contexts = [set(map(int, r["history"])) | set(map(int, r["slate"])) | {int(r["item_id"])} for r in rows]
    mentions = []
    for context, spans in zip(contexts, named):
        for ids in {frozenset(s) for _, _, s in spans}:
            mentions.append(min(ids & context) if ids & context else min(ids))
    slate_items = [int(i) for r in rows for i in r["slate"]]
    mention_c = bias.popularity_concentration(mentions, pop)
    slate_c = bias.popularity_concentration(slate_items, pop)
    delta = mention_c["gini"] - slate_c["gini"] if mention_c["gini"] is not None and slate_c["gini"] is not None \
        else None
    pop_section = {"mention": mention_c, "slate": slate_c, "gini_delta": delta}

    # --- privacy ---
    memo = privacy.MemorisationIndex(train_refs["user_id"].tolist(), train_refs["text"].astype(str).tolist(), cfg)
    # items in any audited user's history; a named item outside u's context (⊇ u's history) that is in
    # this set is therefore in *another* audited user's history
    audited_history = {int(i) for r in rows for i in r["history"]}
    kinds = ("pii", "cross_user", "memorisation")
    flagged = {k: 0 for k in kinds}
    any_flag, examples = 0, []
    for r, text, context in zip(rows, texts, contexts):
        u = int(r["user_id"])
        found = privacy.audit_text(text, u, context, audited_history, titles, memo)
        for k in {f.kind for f in found}:
            flagged[k] += 1
        if found:
            any_flag += 1
            if len(examples) < n_examples:
                examples.append({"user_id": u, "item_id": int(r["item_id"]), "text": text,
                                 "findings": [f"{f.kind}: {f.detail}" for f in found]})
    n = len(rows)
    privacy_section = {"leak_rate": any_flag / n if n else None, "n_flagged": any_flag,
                       "rates": {k: flagged[k] / n if n else None for k in kinds}, "counts": flagged,
                       "memo_n": cfg.memo_n, "memo_max_users": cfg.memo_max_users, "examples": examples}
    return {"toxicity": tox_section, "bias": bias_section, "popularity": pop_section, "privacy": privacy_section}
