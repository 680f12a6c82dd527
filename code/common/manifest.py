"""``manifest.json`` next to every artifact: what went in (with sha256), how, and what came out.

A stage refuses an input whose manifest is missing or disagrees with the file (see
:func:`verify_input`), so a stale or hand-edited artifact cannot silently feed the next stage.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from . import atomic
from .errors import InputError
from .paths import repo_root

MANIFEST = "manifest.json"
_PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "transformers", "peft", "sentence-transformers")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (its files' relative names and hashes, sorted; manifest excluded)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit(root: Path | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root or repo_root(),
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return res.stdout.strip() + ("-dirty" if dirty else "")


def build(stage: str, *, config: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike] | None = None,
          outputs: Mapping[str, str | os.PathLike] | None = None, seed: int | None = None,
          metrics: Mapping[str, Any] | None = None, started: float | None = None,
          extra: Mapping[str, Any] | None = None) -> dict:
    root = repo_root()

    def rel(p):
        p = Path(p).resolve()
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return str(p)

    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "config": dict(config),
        "seed": seed,
        "inputs": {k: {"path": rel(v), "sha256": sha256_path(v)} for k, v in (inputs or {}).items()},
        "outputs": {k: {"path": rel(v), "sha256": sha256_path(v)} for k, v in (outputs or {}).items()},
        "metrics": dict(metrics or {}),
        "versions": package_versions(),
        "git_commit": git_commit(root),
        "wall_time_s": round(time.time() - started, 3) if started is not None else None,
    }
    manifest.update(extra or {})
    return manifest


def manifest_path(where: str | os.PathLike) -> Path:
    """``where`` is an output folder (→ ``<folder>/manifest.json``) or a manifest file ``*.json`` itself
    (single-file artifacts such as ``checkpoints/sasrec_<D>.pt`` keep ``sasrec_<D>.manifest.json``)."""
    where = Path(where)
    return where if where.suffix == ".json" else where / MANIFEST


def write(where: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    path = manifest_path(where)
    atomic.write_json(path, manifest)
    return path


def read(where: str | os.PathLike, stage: str | None = None) -> dict:
    path = manifest_path(where)
    if not path.exists():
        raise InputError(path, f"the manifest of a completed {stage or 'stage'} run", "no such file",
                         "Run that stage first (see README, per-stage commands).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, "valid JSON", f"a parse error ({err})", "Re-run the stage that wrote it.") from None
    if stage is not None and manifest.get("stage") != stage:
        raise InputError(path, f"stage '{stage}'", f"stage '{manifest.get('stage')}'")
    return manifest


def verify_outputs(where: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Every output the manifest lists must exist and hash as recorded."""
    root = repo_root()
    for name, rec in manifest.get("outputs", {}).items():
        p = Path(rec["path"])
        p = p if p.is_absolute() else root / p
        if not p.exists():
            raise InputError(p, f"output '{name}' listed in {manifest_path(where)}", "no such file",
                             "Re-run the stage that wrote it.")
        got = sha256_path(p)
        if got != rec["sha256"]:
            raise InputError(p, f"sha256 {rec['sha256'][:12]}… recorded in {manifest_path(where)}",
                             f"sha256 {got[:12]}…", "The file changed after it was written; re-run that stage.")


def is_complete(where: str | os.PathLike, stage: str, config: Mapping[str, Any],
                inputs: Mapping[str, str | os.PathLike] | None = None, ignore: tuple[str, ...] = ()) -> bool:
    """True when ``where`` (folder or manifest file) records a finished run of ``stage`` with this config
    and these inputs, and every output it lists still hashes as recorded. Keys in ``ignore`` (execution
    settings such as thread count or device, which do not change the result's meaning) are not compared."""
    try:
        m = read(where, stage)
        verify_outputs(where, m)
    except InputError:
        return False
    want = {k: v for k, v in json.loads(json.dumps(dict(config), default=str)).items() if k not in ignore}
    if {k: v for k, v in m.get("config", {}).items() if k not in ignore} != want:
        return False
    for k, v in (inputs or {}).items():
        if m.get("inputs", {}).get(k, {}).get("sha256") != sha256_path(v):
            return False
    return True
