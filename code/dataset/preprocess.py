"""Raw → processed for one dataset (DESIGN.md §3): implicit feedback, iterative k-core, chronological
per-user order, leave-one-out split, contiguous ids, item/user tables and reference explanations.

Entry points: ``python code/dataset/make_splits.py --dataset D`` (the seed's name) and
``bash code/dataset/run_preprocessing.sh``. Output ``data/proc/<D>/``:

- ``interactions.parquet``  user_id, item_id, ts, pos, split (train|valid|test)[, rating]
- ``items.parquet``         item_id (1..n_items), item_raw, title, year, genres ('|'-joined), text
- ``users.parquet``         user_id (1..n_users), user_raw[, attributes such as gender/age/occupation]
- ``references.parquet``    user_id, item_id, pos, split, text, source (review|template)
- ``stats.json``, ``manifest.json``
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from ..common import atomic, manifest
from ..common.errors import InputError
from ..common.logs import get_logger
from ..common.paths import proc_dir, raw_dir
from . import loaders, references, transforms
from .streaming import UserSample

STAGE = "dataset"


@dataclasses.dataclass
class PreprocessConfig:
    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    k_core: int = dataclasses.field(default=5, metadata={"help": "iterative k-core on users and items"})
    min_rating: float | None = dataclasses.field(
        default=None, metadata={"help": "keep interactions with rating >= this (default: the dataset's own)"})
    max_users: int | None = dataclasses.field(default=None, metadata={"help": "keep a seeded sample of users"})
    sample_frac: float | None = dataclasses.field(
        default=None, metadata={"help": "keep a seeded fraction of users (Books local runs)"})
    ref_train_per_user: int = dataclasses.field(
        default=5, metadata={"help": "reference explanations for the last N train items of each user"})
    seed: int = 0


def item_text(items: pd.DataFrame) -> pd.Series:
    """The item's description used by encoders and prompts: 'Title (year)[ by author]. a, b.'"""
    year = items["year"].astype(str).where(items["year"].astype(str) != "", None)
    head = items["title"].astype(str) + np.where(year.notna(), " (" + year.fillna("") + ")", "")
    if "author" in items.columns:  # Books
        author = items["author"].fillna("").astype(str)
        head = head + np.where(author != "", " by " + author, "")
    genres = items["genres"].astype(str).str.replace("|", ", ", regex=False)
    return head + np.where(genres != "", ". " + genres + ".", ".")


def sample_users(inter: pd.DataFrame, cfg: PreprocessConfig) -> pd.DataFrame:
    users = np.sort(inter["user_raw"].unique())
    rng = np.random.default_rng(cfg.seed)
    n = len(users)
    if cfg.sample_frac is not None:
        if not 0 < cfg.sample_frac <= 1:
            raise InputError("--sample_frac", "a fraction in (0, 1]", str(cfg.sample_frac))
        n = max(1, int(round(cfg.sample_frac * n)))
    if cfg.max_users is not None:
        n = min(n, cfg.max_users)
    if n == len(users):
        return inter
    keep = rng.choice(users, size=n, replace=False)
    return inter[inter["user_raw"].isin(keep)]


def process(raw: loaders.RawData, cfg: PreprocessConfig, min_rating: float | None) -> dict:
    """Pure processing of loaded raw data → the processed tables and stats."""
    inter = raw.interactions
    n_raw = len(inter)
    if min_rating is not None and "rating" in inter.columns:
        inter = inter[inter["rating"] >= min_rating]
    inter = inter.drop_duplicates(["user_raw", "item_raw"], keep="first")  # implicit: one event per pair
    if not raw.sampled:  # streaming loaders sample while reading (see streaming.UserSample)
        inter = sample_users(inter, cfg)
    inter = transforms.iterative_kcore(inter, cfg.k_core)
    if inter.empty:
        raise transforms.EmptyAfterFilter(
            f"no interactions left after min_rating={min_rating} and {cfg.k_core}-core filtering")
    inter = transforms.chronological(inter)
    inter, user_index, item_index = transforms.remap_ids(inter)
    inter = transforms.leave_one_out(inter)

    items = raw.items.drop_duplicates("item_raw").set_index("item_raw").reindex(item_index)
    items = items.reset_index().rename(columns={"index": "item_raw"})
    items["title"] = items["title"].fillna("").astype(str)
    items.loc[items["title"] == "", "title"] = "item " + items.loc[items["title"] == "", "item_raw"].astype(str)
    items["year"] = items["year"].fillna("").astype(str)
    items["genres"] = items["genres"].fillna("").astype(str)
    items.insert(0, "item_id", np.arange(1, len(items) + 1, dtype=np.int32))
    items["text"] = item_text(items)

    users = pd.DataFrame({"user_id": np.arange(1, len(user_index) + 1, dtype=np.int32), "user_raw": user_index})
    if raw.users is not None:
        attrs = raw.users.drop_duplicates("user_raw").set_index("user_raw")
        users = users.join(attrs, on="user_raw")

    if raw.review_lookup is not None:  # Books: fetch the review text of the rows that get a reference
        mask = references.reference_rows(inter, cfg.ref_train_per_user)
        need = inter[mask]
        keys = list(zip(need["user_raw"], need["item_raw"]))
        found = raw.review_lookup(set(keys))
        review = np.full(len(inter), None, dtype=object)
        review[np.flatnonzero(mask)] = [found.get(k) for k in keys]
        inter = inter.assign(review=review)
    hours = inter["rating"] if raw.rating_unit == "hours" else None
    refs = references.build_references(inter, items, raw.item_kind, cfg.ref_train_per_user, hours=hours)
    keep_cols = ["user_id", "item_id", "ts", "pos", "split"] + (["rating"] if "rating" in inter.columns else [])
    inter_out = inter[keep_cols].reset_index(drop=True)
    inter_out[["user_id", "item_id"]] = inter_out[["user_id", "item_id"]].astype("int32")

    n_users, n_items, n_inter = len(users), len(items), len(inter_out)
    stats = {
        "dataset": cfg.dataset, "raw_interactions": int(n_raw), "users": n_users, "items": n_items,
        "interactions": n_inter, "density": n_inter / (n_users * n_items),
        "avg_seq_len": n_inter / n_users, "k_core": cfg.k_core, "min_rating": min_rating,
        "references": {k: int(v) for k, v in refs["source"].value_counts().items()},
        "id_map_sha256": transforms.id_map_sha256(user_index, item_index),
        "order": raw.order,
        "rating_unit": raw.rating_unit,
        "split": "leave-one-out: last = test, second-last = valid, rest = train",
        # users whose valid/test (or valid/last-train) order a tied timestamp decided; see transforms.split_ties
        "split_ties": transforms.split_ties(inter),
    }
    return {"interactions": inter_out, "items": items, "users": users, "references": refs, "stats": stats}


def run(cfg: PreprocessConfig, root=None) -> dict:
    """Load the raw files of ``cfg.dataset``, process them and write ``data/proc/<D>/`` atomically."""
    log = get_logger()
    started = time.time()
    spec = loaders.get_spec(cfg.dataset)
    raw_folder = raw_dir(cfg.dataset, root)
    raw = spec.load(raw_folder, UserSample(cfg.max_users, cfg.sample_frac, cfg.seed))
    min_rating = cfg.min_rating if cfg.min_rating is not None else spec.min_rating
    try:
        out = process(raw, cfg, min_rating)
    except transforms.EmptyAfterFilter as err:
        raise InputError(raw_folder, "interactions left after filtering", f"none ({err})",
                         "Lower --k_core or --min_rating, or use more data.") from None
    dest = proc_dir(cfg.dataset, root)
    with atomic.atomic_dir(dest) as tmp:
        for name in ("interactions", "items", "users", "references"):
            out[name].to_parquet(tmp / f"{name}.parquet", index=False)
        atomic.write_json(tmp / "stats.json", out["stats"])
        m = manifest.build(
            STAGE, config=dataclasses.asdict(cfg), seed=cfg.seed, started=started,
            inputs={f.name: f for f in raw.files},
            outputs={},
            metrics={k: out["stats"][k] for k in ("users", "items", "interactions")},
            extra={"id_map_sha256": out["stats"]["id_map_sha256"],
                   "files": {p.name: manifest.sha256_file(p) for p in sorted(tmp.iterdir())}},
        )
        manifest.write(tmp, m)
    log.info("wrote %s: %d users, %d items, %d interactions (%.1fs)", dest, out["stats"]["users"],
             out["stats"]["items"], out["stats"]["interactions"], time.time() - started)
    return out["stats"]
