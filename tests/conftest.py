"""Shared fixtures. ``ml100k_processed``: ML-100K preprocessed once per session in a temporary root.

The raw files come from the recbole==1.2.1 wheel that ``scripts/setup.sh`` puts in ``data/_wheels/``
(DESIGN.md §6), or from ``data/raw/ml100k/`` if it already holds RecBole's atomic copy. The real
``data/``, ``checkpoints/`` and ``logs/`` are never written.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
# Test files that take the longest (the smoke driver end to end, the real-model warm start, the two-rank DDP
# launches): collected first, so that under pytest-xdist (scripts/run_tests.sh) they start at once on their
# own workers instead of becoming the tail of the run.
LONGEST_FIRST = ("test_smoke_driver.py", "test_explainer_e2e.py", "test_distributed.py")


def in_worker() -> bool:
    """True inside a pytest-xdist worker."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def intra_op_threads() -> int:
    """Torch threads for a test that wants several: one per xdist worker (the workers fill the cores), else 2."""
    return 1 if in_worker() else 2


def pytest_configure(config):
    """Inside an xdist worker, the worker and every stage script it starts use one intra-op thread: two
    workers of two OpenMP threads each on two cores stall each other."""
    if in_worker():
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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
