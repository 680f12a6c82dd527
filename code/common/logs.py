"""Logging to the console and a file, plus a ``metrics.jsonl`` writer (one JSON object per line)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger("recrl")
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger("recrl")


def tensorboard_writer(folder: str | os.PathLike):
    """A TensorBoard ``SummaryWriter`` on ``folder`` when the ``tensorboard`` package is installed, else None
    (it is optional: metrics.jsonl is the record)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


class MetricsLog:
    """Append-only ``metrics.jsonl``: ``log({"train/loss": 0.3}, step=10)``. Flushed every line.

    With ``tensorboard=True`` the numeric values also go to TensorBoard event files in ``<folder>/tb/``
    when the ``tensorboard`` package is installed. ``enabled=False`` writes nothing at all (the ranks of a
    data-parallel run other than rank 0).
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, tensorboard: bool = False,
                 enabled: bool = True):
        self.path = Path(path)
        self._f = self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a" if append else "w")
        self.tb = tensorboard_writer(self.path.parent / "tb") if tensorboard else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._f is None:
            return
        row = {"time": round(time.time(), 3), "step": step, **metrics}
        self._f.write(json.dumps(row, default=float) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
