"""Readers for each dataset's raw files, in their published formats.

Every reader returns a :class:`RawData` with raw ids and the files it read, and raises
:class:`~shielded_recrl.common.errors.InputError` (naming the file, what was expected and what was
found) on a malformed file. Readers do I/O; all transforms live in :mod:`.transforms`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pandas as pd

from ..common.errors import InputError


@dataclasses.dataclass
class RawData:
    interactions: pd.DataFrame  # user_raw, item_raw, ts, [rating], [review]
    items: pd.DataFrame  # item_raw, title, year, genres ('|'-joined attributes)
    users: pd.DataFrame | None  # user_raw + attributes, where the data has them
    files: list[Path]  # every raw file read (their sha256 goes into the manifest)
    item_kind: str  # the noun used in template explanations: film, book, game


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    min_rating: float | None  # implicit-feedback threshold; None keeps every interaction
    load: Callable[[Path], RawData]


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
        raise InputError(path, f"{what} with columns {columns}", f"columns {list(df.columns)}")
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
    if title.endswith(")") and len(title) > 7 and title[-6:-1].isdigit() and title[-7] == "(":
        title, year = title[:-7].strip(), title[-5:-1]
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


def load_ml100k(raw: Path) -> RawData:
    """``raw`` holds either ``ml-100k/u.data`` (GroupLens zip) or ``ml-100k.inter`` (RecBole copy)."""
    if (raw / "ml-100k" / "u.data").exists():
        return _load_ml100k_grouplens(raw / "ml-100k")
    if (raw / "ml-100k.inter").exists():
        return _load_ml100k_atomic(raw)
    raise InputError(raw, "MovieLens-100K raw files (ml-100k/u.data or ml-100k.inter)", "neither",
                     "Run: python code/dataset/download.py --dataset ml100k")


DATASETS: dict[str, DatasetSpec] = {
    "ml100k": DatasetSpec("ml100k", "MovieLens-100K (GroupLens; offline copy in the recbole==1.2.1 wheel)",
                          None, load_ml100k),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise InputError("--dataset", f"one of {sorted(DATASETS)}", repr(name))
    return DATASETS[name]
