"""Reading ``data/proc/<D>/`` for later stages, with its manifest checked first."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..common import manifest
from ..common.errors import InputError
from ..common.paths import proc_dir

STAGE = "dataset"


@dataclasses.dataclass
class Processed:
    dataset: str
    folder: Path
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    references: pd.DataFrame
    stats: dict
    id_map_sha256: str

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def sequences(self, upto: str = "train") -> list[np.ndarray]:
        """Per user (index user_id-1) the chronological item ids of the train split, or up to and
        including valid (``upto='valid'``: the input history for test prediction)."""
        keep = {"train": ("train",), "valid": ("train", "valid"), "test": ("train", "valid", "test")}[upto]
        df = self.interactions[self.interactions["split"].isin(keep)]
        groups = df.groupby("user_id", sort=True)["item_id"].apply(lambda s: s.to_numpy(np.int64))
        return [groups.get(u, np.zeros(0, np.int64)) for u in range(1, self.n_users + 1)]

    def targets(self, split: str) -> np.ndarray:
        """The held-out item of each user for ``split`` (valid|test), indexed by user_id-1."""
        df = self.interactions[self.interactions["split"] == split].sort_values("user_id")
        if len(df) != self.n_users:
            raise InputError(self.folder / "interactions.parquet", f"one {split} item per user",
                             f"{len(df)} for {self.n_users} users", "Re-run preprocessing.")
        return df["item_id"].to_numpy(np.int64)


def load_processed(dataset: str, root: Path | None = None, folder: Path | None = None) -> Processed:
    folder = Path(folder) if folder is not None else proc_dir(dataset, root)
    m = manifest.read(folder, STAGE)
    for name, digest in m.get("files", {}).items():
        f = folder / name
        if not f.exists():
            raise InputError(f, f"a file listed in {folder / 'manifest.json'}", "no such file",
                             f"Re-run: python code/dataset/make_splits.py --dataset {dataset}")
        got = manifest.sha256_file(f)
        if got != digest:
            raise InputError(f, f"sha256 {digest[:12]}… (from its manifest)", f"{got[:12]}…",
                             f"The file changed after preprocessing; re-run make_splits.py --dataset {dataset}")
    read = lambda n: pd.read_parquet(folder / f"{n}.parquet")  # noqa: E731
    stats = json.loads((folder / "stats.json").read_text())
    return Processed(dataset, folder, read("interactions"), read("items"), read("users"), read("references"),
                     stats, m["id_map_sha256"])
