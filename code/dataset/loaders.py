"""Readers for each dataset's raw files, in their published formats.

Every reader returns a :class:`RawData` with raw ids and the files it read, and raises
:class:`~shielded_recrl.common.errors.InputError` (naming the file, what was expected and what was
found) on a malformed file. Readers do I/O; all transforms live in :mod:`.transforms`.
"""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..common.errors import InputError
from .streaming import ReviewLookup, UserSample, iter_json_lines, lookup_reviews, sample_rows


@dataclasses.dataclass
class RawData:
    interactions: pd.DataFrame  # user_raw, item_raw, ts, [rating], [review]
    items: pd.DataFrame  # item_raw, title, year, genres ('|'-joined attributes)
    users: pd.DataFrame | None  # user_raw + attributes, where the data has them
    files: list[Path]  # every raw file read (their sha256 goes into the manifest)
    item_kind: str  # the noun used in template explanations: film, book, game
    rating_unit: str = "stars"  # what ``rating`` measures: stars (1-5) or hours (Steam: hours played)
    order: str = "per-user chronological by timestamp; ties keep raw-file order"  # what ``ts`` means
    sampled: bool = False  # the loader already applied --max_users/--sample_frac (streaming loaders)
    # Streaming loaders leave the review text on disk; process() asks for the pairs it needs.
    review_lookup: ReviewLookup | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    min_rating: float | None  # implicit-feedback threshold; None keeps every interaction
    load: Callable[..., RawData]  # load(raw_folder, sample: UserSample | None = None)


def _require(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise InputError(path, what, "no such file", fix)
    return path


def read_table(path: Path, *, sep: str, names: list[str] | None, header, columns: list[str], what: str,
               encoding: str = "utf-8", dtype=None) -> pd.DataFrame:
    """Read a delimited file and check it has the expected columns; a clear error otherwise."""
    try:
        df = pd.read_csv(path, sep=sep, names=names, header=header, encoding=encoding, dtype=dtype,
                         engine="c" if len(sep) == 1 else "python", quoting=3 if sep in ("\t", "|") else 0)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError) as err:
        raise InputError(path, what, f"an unreadable file ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = " (wrong delimiter?)" if len(df.columns) == 1 and len(columns) > 1 else ""
        raise InputError(path, f"{what} with columns {columns}", f"columns {list(df.columns)}{hint}",
                         "Use the file as published (see code/dataset/fetch.py for the source).")
    if len(df.columns) < len(columns) or df[columns].isna().all(axis=None):
        raise InputError(path, what, "no usable rows (wrong delimiter?)")
    return df


def _numeric(df: pd.DataFrame, cols: list[str], path: Path, what: str) -> pd.DataFrame:
    for c in cols:
        conv = pd.to_numeric(df[c], errors="coerce")
        bad = conv.isna() & df[c].notna()
        if bad.any() or conv.isna().any():
            first = df.loc[conv.isna(), c].iloc[0]
            raise InputError(path, f"{what}: numeric column '{c}'", f"{first!r} (wrong delimiter or a corrupt row?)")
        df[c] = conv
    return df


# ---------------------------------------------------------------------------------------------------
# MovieLens-100K: GroupLens `ml-100k/u.data|u.item|u.user`, or RecBole's atomic copy
# (`ml-100k.inter|.item|.user`, shipped inside the recbole==1.2.1 wheel; DESIGN.md §6).
# ---------------------------------------------------------------------------------------------------
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]


def _split_title_year(title: str) -> tuple[str, str]:
    """"Usual Suspects, The (1995)" → ("The Usual Suspects", "1995")."""
    title, year = str(title).strip(), ""
    if title.endswith(")") and len(title) > 6 and title[-5:-1].isdigit() and title[-6] == "(":
        title, year = title[:-6].strip(), title[-5:-1]
    return _article_first(title), year


def _article_first(title: str) -> str:
    """MovieLens writes "Glimmer Man, The"; explanations should read "The Glimmer Man"."""
    for art in ("The", "A", "An", "Les", "La", "Le", "Il", "Das", "Der", "Die", "El"):
        if title.endswith(f", {art}"):
            return f"{art} {title[: -len(art) - 2]}"
    return title


def _load_ml100k_grouplens(folder: Path) -> RawData:
    data = _require(folder / "u.data", "MovieLens-100K ratings (u.data)", "Run download.py --dataset ml100k.")
    inter = read_table(data, sep="\t", names=["user_raw", "item_raw", "rating", "ts"], header=None,
                       columns=["user_raw", "item_raw", "rating", "ts"], what="tab-separated user item rating timestamp")
    inter = _numeric(inter, ["user_raw", "item_raw", "rating", "ts"], data, "u.data")
    item_path = _require(folder / "u.item", "MovieLens-100K items (u.item)", "Run download.py --dataset ml100k.")
    cols = ["item_raw", "title", "release", "video", "url"] + ML100K_GENRES
    items = read_table(item_path, sep="|", names=cols, header=None, columns=cols, encoding="latin-1",
                       what="'|'-separated item table with 19 genre flags")
    split = items["title"].map(_split_title_year)
    genres = items[ML100K_GENRES].astype(int).apply(
        lambda r: "|".join(g for g, f in zip(ML100K_GENRES, r) if f and g != "unknown"), axis=1)
    items = pd.DataFrame({"item_raw": items["item_raw"].astype(int), "title": split.str[0],
                          "year": split.str[1], "genres": genres})
    user_path = _require(folder / "u.user", "MovieLens-100K users (u.user)", "Run download.py --dataset ml100k.")
    users = read_table(user_path, sep="|", names=["user_raw", "age", "gender", "occupation", "zip"], header=None,
                       columns=["user_raw", "age", "gender", "occupation"], what="'|'-separated user table")
    users = users[["user_raw", "age", "gender", "occupation"]]
    return RawData(inter, items, users, [data, item_path, user_path], "film")


def _load_ml100k_atomic(folder: Path) -> RawData:
    inter_path = folder / "ml-100k.inter"
    inter = read_table(inter_path, sep="\t", names=None, header=0, what="RecBole atomic .inter (tab-separated)",
                       columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    inter = inter.rename(columns={"user_id:token": "user_raw", "item_id:token": "item_raw",
                                  "rating:float": "rating", "timestamp:float": "ts"})
    inter = _numeric(inter, ["user_raw", "item_raw", "rating", "ts"], inter_path, "ml-100k.inter")
    item_path = _require(folder / "ml-100k.item", "RecBole atomic .item", "Run download.py --dataset ml100k.")
    items = read_table(item_path, sep="\t", names=None, header=0, what="RecBole atomic .item (tab-separated)",
                       columns=["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"])
    items = pd.DataFrame({
        "item_raw": pd.to_numeric(items["item_id:token"]).astype(int),
        "title": items["movie_title:token_seq"].astype(str).map(_article_first),
        "year": items["release_year:token"].fillna("").astype(str).str.replace(r"\.0$", "", regex=True),
        "genres": items["class:token_seq"].fillna("").astype(str).str.split().str.join("|")
        .str.replace("unknown", "", regex=False).str.strip("|"),
    })
    user_path = _require(folder / "ml-100k.user", "RecBole atomic .user", "Run download.py --dataset ml100k.")
    users = read_table(user_path, sep="\t", names=None, header=0, what="RecBole atomic .user (tab-separated)",
                       columns=["user_id:token", "age:token", "gender:token", "occupation:token"])
    users = users.rename(columns={"user_id:token": "user_raw", "age:token": "age", "gender:token": "gender",
                                  "occupation:token": "occupation"})[["user_raw", "age", "gender", "occupation"]]
    return RawData(inter, items, users, [inter_path, item_path, user_path], "film")


def load_ml100k(raw: Path, sample: UserSample | None = None) -> RawData:
    """``raw`` holds either ``ml-100k/u.data`` (GroupLens zip) or ``ml-100k.inter`` (RecBole copy)."""
    if (raw / "ml-100k" / "u.data").exists():
        return _load_ml100k_grouplens(raw / "ml-100k")
    if (raw / "ml-100k.inter").exists():
        return _load_ml100k_atomic(raw)
    raise InputError(raw, "MovieLens-100K raw files (ml-100k/u.data or ml-100k.inter)", "neither",
                     "Run: python code/dataset/download.py --dataset ml100k")


# ---------------------------------------------------------------------------------------------------
# MovieLens-25M: GroupLens `ml-25m/ratings.csv|movies.csv[|tags.csv]` (headers, comma-separated,
# titles quoted when they contain commas). https://files.grouplens.org/datasets/movielens/ml-25m-README.html
# ---------------------------------------------------------------------------------------------------
ML25M_TAGS_PER_ITEM = 3  # most-applied tags appended to an item's attributes
ML25M_TAG_MIN_COUNT = 2  # a tag applied once is one user's note, not an attribute of the film


def _ml25m_tags(path: Path) -> pd.Series:
    """item_raw → '|'-joined top tags (by how often applied; ties alphabetical), lowercased."""
    tags = read_table(path, sep=",", names=None, header=0, columns=["userId", "movieId", "tag"],
                      what="MovieLens-25M tags.csv (userId,movieId,tag,timestamp)",
                      dtype={"movieId": "int64", "tag": "str"})
    tags = tags.dropna(subset=["tag"])
    tags = pd.DataFrame({"item_raw": tags["movieId"], "tag": tags["tag"].astype(str).str.strip().str.lower()})
    tags = tags[(tags["tag"] != "") & ~tags["tag"].str.contains("|", regex=False)]
    counts = tags.groupby(["item_raw", "tag"], sort=False).size().rename("n").reset_index()
    counts = counts[counts["n"] >= ML25M_TAG_MIN_COUNT]
    counts = counts.sort_values(["item_raw", "n", "tag"], ascending=[True, False, True], kind="stable")
    top = counts.groupby("item_raw", sort=False).head(ML25M_TAGS_PER_ITEM)
    return top.groupby("item_raw", sort=False)["tag"].agg("|".join)


def load_ml25m(raw: Path, sample: UserSample | None = None) -> RawData:
    """``raw`` holds ``ml-25m/`` (the extracted zip) or the csv files directly. No user attributes."""
    folder = raw / "ml-25m" if (raw / "ml-25m").is_dir() else raw
    fix = "Run: python code/dataset/download.py --dataset ml25m"
    rpath = _require(folder / "ratings.csv", "MovieLens-25M ratings.csv", fix)
    inter = read_table(rpath, sep=",", names=None, header=0, columns=["userId", "movieId", "rating", "timestamp"],
                       what="MovieLens-25M ratings.csv (userId,movieId,rating,timestamp with a header)",
                       dtype={"userId": "int64", "movieId": "int64", "rating": "float32", "timestamp": "int64"})
    inter = inter.rename(columns={"userId": "user_raw", "movieId": "item_raw", "timestamp": "ts"})
    inter = inter[["user_raw", "item_raw", "rating", "ts"]]
    mpath = _require(folder / "movies.csv", "MovieLens-25M movies.csv", fix)
    movies = read_table(mpath, sep=",", names=None, header=0, columns=["movieId", "title", "genres"],
                        what="MovieLens-25M movies.csv (movieId,title,genres with a header)",
                        dtype={"movieId": "int64", "title": "str", "genres": "str"})
    split = movies["title"].fillna("").map(_split_title_year)
    genres = movies["genres"].fillna("").str.replace("(no genres listed)", "", regex=False)
    items = pd.DataFrame({"item_raw": movies["movieId"], "title": split.str[0], "year": split.str[1],
                          "genres": genres})
    files = [rpath, mpath]
    tpath = folder / "tags.csv"
    if tpath.exists():  # optional: the most-applied tags join the genres as attributes
        tags = _ml25m_tags(tpath)
        extra = items["item_raw"].map(tags).fillna("")
        items["genres"] = [
            "|".join(dict.fromkeys([a for a in g.split("|") if a] +
                                   [t for t in e.split("|") if t and t not in g.lower().split("|")]))
            for g, e in zip(items["genres"], extra)]
        files.append(tpath)
    return RawData(inter, items, None, files, "film")


# ---------------------------------------------------------------------------------------------------
# Steam-200K: `steam-200k.csv`, no header: user_id, game title, behavior (purchase|play), value, 0.
# For "purchase" rows value is 1; for "play" rows it is the hours played.
# ---------------------------------------------------------------------------------------------------
STEAM_COLUMNS = ["user_raw", "title", "behavior", "value", "zero"]


def load_steam(raw: Path, sample: UserSample | None = None) -> RawData:
    """Implicit feedback = the "play" rows (a purchase that was never played says little; every played
    game was also purchased); ``rating`` carries the hours played, so ``--min_rating H`` keeps games
    played at least H hours. The item id is the game title (the file has no game ids).

    NOTE: Steam-200K has no timestamps. The order we use is the file's row order within each user
    (``ts`` = row number): deterministic, but not a time order, so "last = test" is an arbitrary
    held-out game, not the most recent one.
    """
    path = _require(raw / "steam-200k.csv", "Steam-200K steam-200k.csv",
                    "Run: python code/dataset/download.py --dataset steam (needs Kaggle access; see its help).")
    what = "Steam-200K csv without a header: user_id,\"game title\",purchase|play,hours,0"
    df = read_table(path, sep=",", names=STEAM_COLUMNS, header=None, columns=STEAM_COLUMNS, what=what,
                    dtype={"title": "str", "behavior": "str"})
    df = _numeric(df, ["user_raw", "value"], path, what)
    behaviors = set(df["behavior"].dropna().unique())
    if not behaviors <= {"purchase", "play"}:
        bad = sorted(map(str, behaviors - {"purchase", "play"}))[:3]
        raise InputError(path, f"{what}; behavior 'purchase' or 'play'", f"{bad} (wrong column order?)")
    df = df.assign(ts=np.arange(len(df), dtype=np.int64))
    play = df[df["behavior"] == "play"]
    inter = pd.DataFrame({"user_raw": play["user_raw"].astype("int64"), "item_raw": play["title"].astype(str),
                          "rating": play["value"].astype("float32"), "ts": play["ts"]})
    titles = pd.Series(df["title"].astype(str).unique())
    items = pd.DataFrame({"item_raw": titles, "title": titles, "year": "", "genres": ""})
    return RawData(inter, items, None, [path], "game", rating_unit="hours",
                   order="per-user raw-file row order (Steam-200K has no timestamps)")


# ---------------------------------------------------------------------------------------------------
# Amazon Books (2018 release, Ni et al.): `Books_5.json.gz` (one review per line: reviewerID, asin,
# overall, unixReviewTime, reviewText, summary, ...) and `meta_Books.json.gz` (one item per line: asin,
# title, category [path from "Books" down], brand (often the author), date, ...). Streamed.
# ---------------------------------------------------------------------------------------------------
BOOKS_REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
BOOKS_CATEGORIES = 3  # category levels below "Books" kept as attributes
BOOKS_CHUNK_ROWS = 1_000_000
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_TAGS = re.compile(r"<[^>]+>")


def _clean_text(value, limit: int = 200) -> str:
    text = html.unescape(_TAGS.sub(" ", str(value or ""))) if value is not None else ""
    return " ".join(text.split())[:limit]


def _book_author(brand) -> str:
    """The 2018 metadata puts the author in ``brand``, often as "Visit Amazon's <name> Page"."""
    name = _clean_text(brand, 100)
    if name.startswith("Visit Amazon's ") and name.endswith(" Page"):
        name = name[len("Visit Amazon's "): -len(" Page")]
    return name.strip()


def _books_reviews(path: Path, sample: UserSample) -> pd.DataFrame:
    what = "Amazon Books reviews (JSON lines with reviewerID, asin, overall, unixReviewTime)"

    def rows():
        for lineno, obj in iter_json_lines(path, what):
            missing = [f for f in BOOKS_REVIEW_FIELDS if f not in obj]
            if missing:
                raise InputError(path, f"{what}", f"line {lineno} without {missing}",
                                 "Use the 2018 release's Books_5.json.gz (see code/dataset/fetch.py).")
            user = str(obj["reviewerID"])
            yield user, (user, str(obj["asin"]), float(obj["overall"]), int(obj["unixReviewTime"]))

    def frame(buf: list[tuple]) -> pd.DataFrame:
        users, items, rating, ts = zip(*buf)
        return pd.DataFrame({"user_raw": pd.Series(users, dtype="str"), "item_raw": pd.Series(items, dtype="str"),
                             "rating": np.asarray(rating, np.float32), "ts": np.asarray(ts, np.int64)})

    # Columnar chunks: 27M reviews as Python tuples would take ~8 GB, as string/number columns ~1.5 GB.
    chunks, buf = [], []
    for row in sample_rows(rows(), sample):
        buf.append(row)
        if len(buf) >= BOOKS_CHUNK_ROWS:
            chunks.append(frame(buf))
            buf = []
    if buf:
        chunks.append(frame(buf))
    if not chunks:
        raise InputError(path, what, "no reviews (after user sampling)", "Check the file or raise --sample_frac.")
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def _books_meta(path: Path, asins: set[str]) -> pd.DataFrame:
    what = "Amazon Books metadata (JSON lines with asin, title, category, brand, date)"
    rows = []
    for _, obj in iter_json_lines(path, what):
        asin = obj.get("asin")
        if asin not in asins:
            continue
        cats = [_clean_text(c, 60) for c in (obj.get("category") or []) if isinstance(c, str)]
        cats = [c for c in cats if c and c != "Books" and "|" not in c][:BOOKS_CATEGORIES]
        year = _YEAR.search(str(obj.get("date") or ""))
        rows.append((asin, _clean_text(obj.get("title")), year.group(1) if year else "", "|".join(cats),
                     _book_author(obj.get("brand"))))
    return pd.DataFrame(rows, columns=["item_raw", "title", "year", "genres", "author"])


def load_books(raw: Path, sample: UserSample | None = None) -> RawData:
    """Streams the reviews (user sample applied while reading), then the metadata of the kept books only.

    Review text stays on disk: :attr:`RawData.review_lookup` reads it back for just the interactions
    that get a reference explanation, so memory does not grow with the reviews' text.
    """
    fix = "Run: python code/dataset/download.py --dataset books"
    rpath = _require(raw / "Books_5.json.gz", "Amazon Books 5-core reviews Books_5.json.gz", fix)
    mpath = _require(raw / "meta_Books.json.gz", "Amazon Books metadata meta_Books.json.gz", fix)
    sample = sample or UserSample()
    inter = _books_reviews(rpath, sample)
    items = _books_meta(mpath, set(inter["item_raw"].unique()))

    def reviews(pairs):
        return lookup_reviews(rpath, pairs, what="Amazon Books reviews")

    return RawData(inter, items, None, [rpath, mpath], "book", sampled=sample.active, review_lookup=reviews)


# Implicit-feedback thresholds (``min_rating``; ``--min_rating`` overrides):
# - MovieLens: every rating is an interaction (None). The DESIGN's 5-core ML-100K statistics (943 users,
#   1,349 items, 99,287 interactions) need all ratings; a rating is evidence the user watched the film.
# - Books: every review is an interaction (None): the 5-core release is defined on all reviews, and a
#   review, even a critical one, says the user read the book. `--min_rating 4` gives the "liked" variant.
# - Steam: every "play" row (None); `rating` is hours played there, so `--min_rating 1` drops games
#   played less than an hour.
DATASETS: dict[str, DatasetSpec] = {
    "ml100k": DatasetSpec("ml100k", "MovieLens-100K (GroupLens; offline copy in the recbole==1.2.1 wheel)",
                          None, load_ml100k),
    "ml25m": DatasetSpec("ml25m", "MovieLens-25M (GroupLens)", None, load_ml25m),
    "steam": DatasetSpec("steam", "Steam-200K (Kaggle tamber/steam-video-games); play rows, hours as rating",
                         None, load_steam),
    "books": DatasetSpec("books", "Amazon Books 2018 5-core + metadata (McAuley lab, UCSD)", None, load_books),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise InputError("--dataset", f"one of {sorted(DATASETS)}", repr(name))
    return DATASETS[name]
