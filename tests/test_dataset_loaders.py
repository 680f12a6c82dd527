"""Each raw-format loader on its hand-made fixture (tests/fixtures/<dataset>/, see make_fixtures.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from shielded_recrl.dataset import loaders
from shielded_recrl.dataset.preprocess import PreprocessConfig, process
from shielded_recrl.dataset.streaming import UserSample, sample_rows

FIX = Path(__file__).resolve().parent / "fixtures"


def _raw_count(dataset: str) -> int:
    """Rows of the fixture design (10 users x 9 items + 2 + 1), counted from the files independently."""
    if dataset == "ml100k":
        return sum(1 for _ in open(FIX / "ml100k/ml-100k/u.data"))
    if dataset == "ml25m":
        return sum(1 for _ in open(FIX / "ml25m/ml-25m/ratings.csv")) - 1
    if dataset == "steam":
        return sum(1 for line in open(FIX / "steam/steam-200k.csv") if ",play," in line)
    with gzip.open(FIX / "books/Books_5.json.gz", "rt") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("dataset", ["ml100k", "ml25m", "steam", "books"])
def test_loader_reads_fixture_and_processes(dataset):
    spec = loaders.DATASETS[dataset]
    raw = spec.load(FIX / dataset)
    assert len(raw.interactions) == _raw_count(dataset) == 93
    assert {"user_raw", "item_raw", "ts"} <= set(raw.interactions.columns)
    assert raw.interactions[["user_raw", "item_raw", "ts"]].notna().all().all()
    assert {"item_raw", "title", "year", "genres"} <= set(raw.items.columns)
    assert all(f.exists() for f in raw.files)
    out = process(raw, PreprocessConfig(dataset=dataset), spec.min_rating)
    # 5-core removes the 2-interaction user and the single-user item: 10 users, 12 items, 90 rows.
    assert (out["stats"]["users"], out["stats"]["items"], out["stats"]["interactions"]) == (10, 12, 90)
    assert out["items"]["item_id"].tolist() == list(range(1, 13))
    assert out["users"]["user_id"].tolist() == list(range(1, 11))
    refs = out["references"]
    assert len(refs) == 10 * (2 + 5) and refs["text"].str.len().gt(10).all()


def test_ml100k_grouplens_titles_genres_users():
    raw = loaders.load_ml100k(FIX / "ml100k")
    items = raw.items.set_index("item_raw")
    assert (items.loc[2, "title"], items.loc[2, "year"]) == ("The Usual Suspects", "1995")
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[5, "title"] == "Sabrina \xe9t\xe9"  # latin-1 decoded
    users = raw.users.set_index("user_raw")
    assert list(users.columns) == ["age", "gender", "occupation"]
    assert (users.loc[3, "age"], users.loc[3, "gender"], users.loc[3, "occupation"]) == (23, "F", "writer")


def test_ml25m_quoted_titles_no_genres_and_tags():
    raw = loaders.load_ml25m(FIX / "ml25m")
    items = raw.items.set_index("item_raw")
    assert (items.loc[30, "title"], items.loc[30, "year"]) == ("The American President", "1995")
    assert items.loc[60, "title"] == "Seven (a.k.a. Se7en)"
    assert items.loc[120, "genres"] == ""  # "(no genres listed)"
    # tags: top 3 by count (>= 2 uses), ties alphabetical, lowercased; "classic"/"toys" lose the tie
    assert items.loc[10, "genres"] == "Animation|Children|Comedy|pixar|classic|fun"
    assert items.loc[20, "genres"] == "Crime|Thriller|twist ending"  # the tag used once is dropped
    assert items.loc[30, "genres"] == "Comedy|Drama|Romance"  # tag equal to a genre not repeated
    assert raw.users is None and raw.interactions["rating"].between(0.5, 5).all()
    assert raw.files[-1].name == "tags.csv"


def test_steam_play_rows_hours_and_file_order():
    raw = loaders.load_steam(FIX / "steam")
    inter = raw.interactions
    lines = [line for line in open(FIX / "steam/steam-200k.csv")]
    plays = [i for i, line in enumerate(lines) if ",play," in line]
    assert inter["ts"].tolist() == plays  # ts = row number: the file order, documented
    assert raw.rating_unit == "hours" and raw.item_kind == "game"
    first = lines[plays[0]].rsplit(",", 3)
    assert inter.iloc[0]["rating"] == pytest.approx(float(first[2]))
    assert "Warhammer 40,000 Dawn of War II" in set(inter["item_raw"])  # a quoted title with a comma
    assert not inter["item_raw"].str.startswith("Never Played").any()  # purchases never played are out
    out = process(raw, PreprocessConfig(dataset="steam"), None)
    assert out["stats"]["order"].startswith("per-user raw-file row order")
    assert out["references"]["text"].str.contains("hours|an hour", regex=True).all()
    # --min_rating acts on hours: keep games played at least 20 hours
    kept = process(raw, PreprocessConfig(dataset="steam", k_core=1), 20.0)["interactions"]
    assert kept["rating"].min() >= 20


def test_books_streaming_meta_and_review_references():
    raw = loaders.load_books(FIX / "books")
    items = raw.items.set_index("item_raw")
    assert "B999999999" not in items.index  # metadata kept only for reviewed books
    assert items.loc["B000000001", "genres"] == "Literature & Fiction|Genre Fiction"
    assert items.loc["B000000001", "author"] == "Author 1"  # "Visit Amazon's Author 1 Page"
    assert items.loc["B000000003", "author"] == "Author 3"
    assert items.loc["B000000002", "year"] == "1992"
    assert "review" not in raw.interactions.columns  # text stays on disk until needed
    out = process(raw, PreprocessConfig(dataset="books"), None)
    refs = out["references"]
    assert set(refs["source"]) == {"review", "template"}
    assert refs.loc[refs["source"] == "review", "text"].isin([
        "I loved this book from start to finish and could not put it down.",
        "The plot is slow in the middle but the ending makes up for every page of it!"]).all()
    assert out["items"]["text"].iloc[0].startswith("Book Number 1 (1991) by Author 1.")


def test_books_user_sampling_while_streaming():
    full = loaders.load_books(FIX / "books").interactions
    sample = UserSample(max_users=4, seed=3)
    raw = loaders.load_books(FIX / "books", sample)
    assert raw.sampled
    users = set(raw.interactions["user_raw"])
    # the 4 users with the smallest seeded hashes, whatever the file order
    expect = sorted(set(full["user_raw"]), key=sample.user_hash)[:4]
    assert users == set(expect)
    assert len(raw.interactions) == full["user_raw"].isin(expect).sum()
    # rows keep file order
    assert raw.interactions.reset_index(drop=True).equals(
        full[full["user_raw"].isin(expect)].reset_index(drop=True))


def test_sample_rows_bottom_k_and_fraction():
    rows = [(f"u{i % 50}", (i,)) for i in range(500)]
    s = UserSample(max_users=7, sample_frac=0.5, seed=1)
    kept = list(sample_rows(iter(rows), s))
    users = {f"u{r[0] % 50}" for r in kept}
    eligible = sorted((u for u in {u for u, _ in rows} if s.user_hash(u) < 0.5), key=s.user_hash)
    assert users == set(eligible[:7])
    assert [r[0] for r in kept] == sorted(r[0] for r in kept) and len(kept) == 70
    assert list(sample_rows(iter(rows), UserSample())) == [r for _, r in rows]


def test_books_chunked_reading_matches_single_chunk(monkeypatch):
    whole = loaders.load_books(FIX / "books").interactions
    monkeypatch.setattr(loaders, "BOOKS_CHUNK_ROWS", 7)
    chunked = loaders.load_books(FIX / "books").interactions
    pd.testing.assert_frame_equal(whole, chunked)


def test_books_local_run_through_cli(tmp_path, monkeypatch):
    """`make_splits.py --dataset books --max_users N`: sampled while streaming, not sampled twice."""
    import shutil

    from shielded_recrl.dataset import make_splits
    from shielded_recrl.dataset.processed import load_processed

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    shutil.copytree(FIX / "books", tmp_path / "data/raw/books")
    make_splits.main(["--dataset", "books", "--max_users", "6", "--k_core", "3", "--seed", "1"])
    p = load_processed("books")
    expect = sorted({f"A{u:03d}XYZ" for u in range(1, 12)}, key=UserSample(seed=1).user_hash)[:6]
    assert set(p.users["user_raw"]) <= set(expect) and p.n_users >= 5
    assert p.stats["references"].get("review", 0) > 0
    manifest = json.loads((tmp_path / "data/proc/books/manifest.json").read_text())
    assert set(manifest["inputs"]) == {"Books_5.json.gz", "meta_Books.json.gz"}
    assert manifest["config"]["max_users"] == 6
