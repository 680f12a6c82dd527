"""Shared fixtures. ``ml100k_processed``: ML-100K preprocessed once per session in a temporary root.

The raw files come from the recbole==1.2.1 wheel that ``scripts/setup.sh`` puts in ``data/_wheels/``
(DESIGN.md §6), or from ``data/raw/ml100k/`` if it already holds RecBole's atomic copy. The real
``data/``, ``checkpoints/`` and ``logs/`` are never written.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def _copy_ml100k_raw(dest: Path) -> bool:
    dest.mkdir(parents=True, exist_ok=True)
    wheels = sorted((REPO / "data" / "_wheels").glob("recbole-1.2.1-*.whl")) + \
        sorted((REPO / "tests" / "fixtures").glob("recbole-1.2.1-*.whl"))
    if wheels:
        with zipfile.ZipFile(wheels[0]) as z:
            for name in _ML100K_FILES:
                (dest / name).write_bytes(z.read(f"recbole/dataset_example/ml-100k/{name}"))
        return True
    raw = REPO / "data" / "raw" / "ml100k"
    if all((raw / n).exists() for n in _ML100K_FILES):
        for name in _ML100K_FILES:
            shutil.copyfile(raw / name, dest / name)
        return True
    return False


@pytest.fixture(scope="session")
def ml100k_processed(tmp_path_factory):
    """A ``Processed`` for ML-100K (5-core, leave-one-out) built in a session-wide temporary root."""
    from shielded_recrl.dataset.preprocess import PreprocessConfig, run
    from shielded_recrl.dataset.processed import load_processed

    root = tmp_path_factory.mktemp("ml100k_root")
    if not _copy_ml100k_raw(root / "data" / "raw" / "ml100k"):
        pytest.skip("ML-100K raw files not available: run scripts/setup.sh (puts the recbole wheel in data/_wheels/)")
    run(PreprocessConfig(dataset="ml100k"), root=root)
    return load_processed("ml100k", root=root)
