"""Bad raw input → a clear error (file, expected, found) with exit status 2, and no half-written output:
an existing data/proc/<D>/ stays exactly as it was and no temporary folder is left behind."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from shielded_recrl.common.errors import run_cli
from shielded_recrl.common.manifest import sha256_file
from shielded_recrl.dataset import make_splits

FIX = Path(__file__).resolve().parent / "fixtures"


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(make_splits.main, argv)
        raise SystemExit(0)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    return tmp_path


def prepared(root: Path, dataset: str, capsys) -> tuple[Path, dict[str, str]]:
    """Raw fixture copied in and processed once: the output a failing re-run must not touch."""
    shutil.copytree(FIX / dataset, root / "data/raw" / dataset)
    code, err = cli(["--dataset", dataset], capsys)
    assert code == 0, err
    proc = root / "data/proc" / dataset
    return proc, snapshot(proc)


def assert_untouched(proc: Path, before: dict[str, str]):
    assert snapshot(proc) == before
    assert sorted(p.name for p in proc.parent.iterdir()) == [proc.name]  # no .tmp / .old left


def test_truncated_gzip(root, capsys):
    proc, before = prepared(root, "books", capsys)
    path = root / "data/raw/books/Books_5.json.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, err = cli(["--dataset", "books", "--force"], capsys)
    assert code == 2
    assert str(path) in err and "complete gzip stream" in err and "truncated" in err
    assert_untouched(proc, before)


def test_corrupt_json_line(root, capsys):
    proc, before = prepared(root, "books", capsys)
    path = root / "data/raw/books/meta_Books.json.gz"
    with gzip.open(path, "at") as f:
        f.write("{'asin': 'python repr, not JSON'}\n")
    code, err = cli(["--dataset", "books", "--force"], capsys)
    assert code == 2 and str(path) in err and "invalid JSON on line 15" in err
    assert_untouched(proc, before)


def test_missing_column(root, capsys):
    proc, before = prepared(root, "ml25m", capsys)
    path = root / "data/raw/ml25m/ml-25m/ratings.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[:2] + line.split(",")[3:]) for line in lines) + "\n")
    code, err = cli(["--dataset", "ml25m", "--force"], capsys)
    assert code == 2 and str(path) in err
    assert "columns ['userId', 'movieId', 'rating', 'timestamp']" in err and "found columns ['userId', 'movieId', 'timestamp']" in err
    assert_untouched(proc, before)


def test_wrong_delimiter(root, capsys):
    proc, before = prepared(root, "ml25m", capsys)
    path = root / "data/raw/ml25m/ml-25m/ratings.csv"
    path.write_text(path.read_text().replace(",", "\t"))
    code, err = cli(["--dataset", "ml25m", "--force"], capsys)
    assert code == 2 and str(path) in err and "expected MovieLens-25M ratings.csv" in err
    assert_untouched(proc, before)


def test_wrong_delimiter_headerless(root, capsys):
    proc, before = prepared(root, "ml100k", capsys)
    path = root / "data/raw/ml100k/ml-100k/u.data"
    path.write_text(path.read_text().replace("\t", ","))
    code, err = cli(["--dataset", "ml100k", "--force"], capsys)
    assert code == 2 and str(path) in err and "wrong delimiter" in err
    assert_untouched(proc, before)


def test_steam_wrong_column_order(root, capsys):
    proc, before = prepared(root, "steam", capsys)
    path = root / "data/raw/steam/steam-200k.csv"
    lines = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("\n".join(",".join([r[0], r[-3], r[-4], *r[1:-4], r[-2], r[-1]]) for r in lines) + "\n")
    code, err = cli(["--dataset", "steam", "--force"], capsys)
    assert code == 2 and str(path) in err
    assert_untouched(proc, before)


def test_empty_after_kcore(root, capsys):
    proc, before = prepared(root, "ml25m", capsys)
    code, err = cli(["--dataset", "ml25m", "--k_core", "50"], capsys)
    assert code == 2 and "interactions left after filtering" in err and "50-core" in err
    assert "Lower --k_core" in err
    assert_untouched(proc, before)


def test_missing_raw_files(root, capsys):
    code, err = cli(["--dataset", "ml25m"], capsys)
    assert code == 2 and "ratings.csv" in err and "download.py --dataset ml25m" in err
    assert not (root / "data/proc/ml25m").exists()


def test_unknown_dataset(root, capsys):
    code, err = cli(["--dataset", "netflix"], capsys)
    assert code == 2 and "'netflix'" in err and "ml100k" in err
    assert not (root / "data/proc").exists() or not any((root / "data/proc").iterdir())


def test_rerun_is_skipped_when_complete(root, capsys):
    proc, before = prepared(root, "steam", capsys)
    code, _ = cli(["--dataset", "steam"], capsys)
    assert code == 0 and snapshot(proc) == before


def test_run_preprocessing_sh(root):
    """The seed's driver: preprocesses what has raw files, skips the rest, fails when nothing is there."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "code/dataset/run_preprocessing.sh"
    env = dict(os.environ, RECRL_ROOT=str(root), PYTHON=sys.executable)
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "nothing to do" in res.stderr
    shutil.copytree(FIX / "steam", root / "data/raw/steam")
    res = subprocess.run(["bash", str(script), "--force"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ml25m: no raw files" in res.stdout and (root / "data/proc/steam/manifest.json").exists()
    assert not (root / "data/proc/ml25m").exists()
