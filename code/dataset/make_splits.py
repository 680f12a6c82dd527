"""Preprocess one dataset into leave-one-out splits (the seed's ``make_splits``).

    python code/dataset/make_splits.py --dataset ml100k [--k_core 5] [--max_users N] [--force]
"""

from __future__ import annotations

import dataclasses
import json

from shielded_recrl.common import manifest
from shielded_recrl.common.configs import parse_config
from shielded_recrl.common.errors import run_cli
from shielded_recrl.common.logs import setup_logging
from shielded_recrl.common.paths import proc_dir, raw_dir
from shielded_recrl.dataset import loaders
from shielded_recrl.dataset.preprocess import STAGE, PreprocessConfig, run


def is_done(cfg: PreprocessConfig) -> bool:
    """Complete when the manifest's config and raw-input hashes match, and every file hashes as recorded."""
    folder = proc_dir(cfg.dataset)
    try:
        m = manifest.read(folder, STAGE)
    except Exception:  # noqa: BLE001 - any unreadable manifest means "not done"
        return False
    if m.get("config") != dataclasses.asdict(cfg):
        return False
    for name, digest in m.get("files", {}).items():
        f = folder / name
        if not f.exists() or manifest.sha256_file(f) != digest:
            return False
    for name, rec in m.get("inputs", {}).items():
        f = manifest.repo_root() / rec["path"]
        if not f.exists() or manifest.sha256_file(f) != rec["sha256"]:
            return False
    return True


def main(argv=None):
    cfg, ns = parse_config(PreprocessConfig, argv, description=__doc__,
                           extra_args=lambda p: p.add_argument("--force", action="store_true",
                                                               help="redo even if the output is complete"))
    setup_logging()
    loaders.get_spec(cfg.dataset)
    if not ns.force and is_done(cfg):
        print(f"[dataset] {proc_dir(cfg.dataset)} is complete for this config (use --force to redo)")
        return
    _ = raw_dir(cfg.dataset)
    stats = run(cfg)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    run_cli(main)
