"""k-core (property test), chronological leave-one-out split, and ML-100K end to end from the recbole wheel."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shielded_recrl.dataset import transforms
from shielded_recrl.dataset.fetch import fetch
from shielded_recrl.dataset.preprocess import PreprocessConfig, run
from shielded_recrl.dataset.processed import load_processed

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"


def kcore_reference(pairs, k):
    """Independent k-core: peel with plain Counters until nothing changes (no pandas)."""
    pairs = set(pairs)
    while True:
        uc = Counter(u for u, _ in pairs)
        ic = Counter(i for _, i in pairs)
        kept = {(u, i) for u, i in pairs if uc[u] >= k and ic[i] >= k}
        if kept == pairs:
            return pairs
        pairs = kept


pairs_strategy = st.lists(st.tuples(st.integers(0, 14), st.integers(0, 11)), min_size=0, max_size=160, unique=True)


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, k=st.integers(1, 6))
def test_kcore_property(pairs, k):
    df = pd.DataFrame(pairs, columns=["user_raw", "item_raw"], dtype="int64")
    out = transforms.iterative_kcore(df, k)
    if len(out):
        assert out["user_raw"].value_counts().min() >= k
        assert out["item_raw"].value_counts().min() >= k
    got = set(zip(out["user_raw"], out["item_raw"]))
    assert got <= set(pairs)
    # maximal: equal to the peeling fixed point, which contains every subset where all degrees are >= k
    assert got == kcore_reference(pairs, k)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 30)), min_size=1, max_size=120))
def test_split_is_chronological_leave_one_out(rows):
    df = pd.DataFrame(rows, columns=["user_raw", "item_raw", "ts"]).drop_duplicates(["user_raw", "item_raw"])
    df = transforms.chronological(df)
    df, users, items = transforms.remap_ids(df)
    out = transforms.leave_one_out(df)
    assert out["user_id"].min() == 1 and out["item_id"].min() == 1  # 0 is padding
    assert sorted(out["item_id"].unique()) == list(range(1, len(items) + 1))
    for uid, g in out.groupby("user_id"):
        ts = g["ts"].to_numpy()
        assert (np.diff(ts) >= 0).all() and g["pos"].tolist() == list(range(len(g)))
        splits = g["split"].tolist()
        assert splits[-1] == "test"
        if len(g) >= 2:
            assert splits[-2] == "valid" and splits.count("valid") == 1
        assert splits.count("test") == 1 and set(splits[:-2]) <= {"train"}
        test_ts, train_ts = ts[-1], ts[:-1]
        assert (train_ts <= test_ts).all()  # test = the latest
        held = set(g.loc[g["split"] != "train", "item_id"])
        assert not held & set(g.loc[g["split"] == "train", "item_id"])  # no leak into train history


def test_split_ties_count_users_whose_order_a_tied_timestamp_decided():
    rows = [  # (user, item, ts) in raw-file order
        ("a", 1, 10), ("a", 2, 20), ("a", 3, 30), ("a", 4, 30),  # valid 3 / test 4 tie (file order decides)
        ("b", 1, 10), ("b", 2, 20), ("b", 3, 20), ("b", 4, 40),  # last train 2 / valid 3 tie
        ("c", 1, 10), ("c", 2, 20), ("c", 3, 30), ("c", 4, 40),  # no tie
        ("d", 5, 50), ("d", 1, 50), ("d", 2, 50),  # all three tied: both kinds
        ("e", 6, 70), ("e", 7, 70),  # two interactions, tied: test/valid only (no train item)
        ("f", 8, 80),  # one interaction: no valid item, untied
        ("g", 2, 5), ("g", 1, 9), ("g", 3, 9), ("g", 4, 1),  # out of file order: 4, 2 | 1, 3 tie at 9
    ]
    df = pd.DataFrame(rows, columns=["user_raw", "item_raw", "ts"])
    df, _, _ = transforms.remap_ids(transforms.chronological(df))
    out = transforms.leave_one_out(df)
    g = out[out["user_raw"] == "g"]
    assert g["item_raw"].tolist() == [4, 2, 1, 3] and g["split"].tolist()[-2:] == ["valid", "test"]
    ties = transforms.split_ties(out)
    n = 7
    assert ties["test_valid"] == {"users": 4, "rate": 4 / n}  # a, d, e, g
    assert ties["valid_train"] == {"users": 2, "rate": 2 / n}  # b, d
    assert ties["either"] == {"users": 5, "rate": 5 / n}  # a, b, d, e, g
    assert "share" in ties["definition"]
    with pytest.raises(ValueError, match="reordered"):
        transforms.split_ties(out.sort_values("item_raw", kind="stable"))


def test_processed_split_on_fixture(tmp_path, monkeypatch):
    """Through the real writer and reader: targets are each user's latest, histories exclude them."""
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    shutil.copytree(FIX / "ml25m", tmp_path / "data/raw/ml25m")
    stats = run(PreprocessConfig(dataset="ml25m"))
    p = load_processed("ml25m")
    inter = p.interactions
    assert p.stats["split_ties"] == stats["split_ties"] == transforms.split_ties(inter)
    test, valid = p.targets("test"), p.targets("valid")
    for u, hist in enumerate(p.sequences("train"), 1):
        g = inter[inter["user_id"] == u].sort_values("pos")
        assert test[u - 1] == g["item_id"].iloc[-1] and valid[u - 1] == g["item_id"].iloc[-2]
        assert g["ts"].iloc[-1] == g["ts"].max()
        assert g["ts"].iloc[-2] == g["ts"].iloc[:-1].max()
        assert test[u - 1] not in hist and valid[u - 1] not in hist
        assert list(hist) == g["item_id"].iloc[:-2].tolist()


def _recbole_wheel() -> Path | None:
    found = sorted((REPO / "data" / "_wheels").glob("recbole-1.2.1-*.whl"))
    return found[0] if found else None


@pytest.mark.slow
def test_ml100k_end_to_end_from_recbole_wheel(tmp_path, monkeypatch):
    wheel = _recbole_wheel()
    if wheel is None:
        pytest.skip("data/_wheels/recbole-1.2.1-*.whl absent: `bash scripts/setup.sh` downloads it")
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    (tmp_path / "data/_wheels").mkdir(parents=True)
    shutil.copy(wheel, tmp_path / "data/_wheels" / wheel.name)
    checked = fetch("ml100k", offline=True, progress=False)
    assert sorted(checked) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (tmp_path / "data/_checksums/ml100k.json").exists()

    stats = run(PreprocessConfig(dataset="ml100k"))
    # independent count: csv module + Counter peeling, all ratings kept, one event per (user, item)
    with open(tmp_path / "data/raw/ml100k/ml-100k.inter", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        assert header[:2] == ["user_id:token", "item_id:token"]
        pairs = {(int(r[0]), int(r[1])) for r in reader}
    core = kcore_reference(pairs, 5)
    n_users, n_items = len({u for u, _ in core}), len({i for _, i in core})
    assert (stats["users"], stats["items"], stats["interactions"]) == (n_users, n_items, len(core))
    assert (n_users, n_items, len(core)) == (943, 1349, 99287)  # DESIGN.md §7
    # 44% of users: file order, not time, decided which of their last two items is the test target
    assert stats["split_ties"]["test_valid"]["users"] == 416

    p = load_processed("ml100k")
    assert p.n_users == 943 and p.n_items == 1349
    assert (p.interactions.groupby("user_id")["split"].apply(lambda s: s.tolist()[-2:]) == pd.Series(
        [["valid", "test"]] * 943, index=range(1, 944))).all()
    assert {"gender", "age", "occupation"} <= set(p.users.columns)
    assert set(p.references["source"]) == {"template"}
    assert p.items["text"].str.len().gt(3).all()
    assert p.items.loc[p.items["title"].str.startswith("The Usual Suspects"), "year"].tolist() == ["1995"]
