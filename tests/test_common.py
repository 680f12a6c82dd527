"""The shared helpers: paths, configs, atomic writes, manifests, seeding, devices, logging."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shielded_recrl.common import atomic, configs, device, manifest, paths, seeding
from shielded_recrl.common.errors import InputError
from shielded_recrl.common.logs import MetricsLog, read_metrics

REPO = Path(__file__).resolve().parents[1]


def test_repo_root_found_from_package_and_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    assert (paths.repo_root() / "pyproject.toml").exists()
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path))
    assert paths.repo_root() == tmp_path.resolve()
    assert paths.proc_dir("ml100k") == tmp_path.resolve() / "data" / "proc" / "ml100k"


def test_user_paths_dot_relative_to_cwd_else_root(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path / "root"))
    monkeypatch.chdir(tmp_path)
    assert paths.resolve_user_path("../x.pt") == (tmp_path.parent / "x.pt").resolve()
    assert paths.resolve_user_path("./x.pt") == tmp_path / "x.pt"
    assert paths.resolve_user_path("checkpoints/x.pt") == (tmp_path / "root" / "checkpoints" / "x.pt").resolve()
    assert paths.resolve_user_path("/abs/x.pt") == Path("/abs/x.pt")


@dataclasses.dataclass
class _Cfg:
    dataset: str = "ml100k"
    lr: float = 1e-3
    epochs: int = 3
    use_x: bool = False
    name: str | None = None


def test_config_layers_defaults_yaml_per_dataset_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.01\nepochs: 5\nper_dataset:\n  books:\n    epochs: 9\n")
    cfg, _ = configs.parse_config(_Cfg, ["--config", str(y)])
    assert (cfg.lr, cfg.epochs, cfg.use_x) == (0.01, 5, False)
    cfg, _ = configs.parse_config(_Cfg, ["--config", str(y), "--dataset", "books"])
    assert cfg.epochs == 9
    cfg, _ = configs.parse_config(_Cfg, ["--config", str(y), "--dataset", "books", "--epochs", "2", "--use_x"])
    assert (cfg.epochs, cfg.use_x) == (2, True)


def test_config_unknown_yaml_key_is_an_error_naming_file_and_key(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("lr: 0.01\nepoch: 5\n")
    with pytest.raises(InputError) as err:
        configs.parse_config(_Cfg, ["--config", str(y)])
    assert "bad.yaml" in str(err.value) and "epoch" in str(err.value)


def test_config_wrong_type_is_an_error(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("epochs: many\n")
    with pytest.raises(InputError, match="epochs"):
        configs.parse_config(_Cfg, ["--config", str(y)])


def test_unknown_cli_flag_exits_nonzero():
    with pytest.raises(SystemExit) as err:
        configs.parse_config(_Cfg, ["--no_such_flag", "1"])
    assert err.value.code != 0


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    f = tmp_path / "out.json"
    atomic.write_json(f, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(f.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_swaps_whole_folder_or_nothing(tmp_path):
    d = tmp_path / "proc"
    with atomic.atomic_dir(d) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(ValueError):
        with atomic.atomic_dir(d) as tmp:
            (tmp / "a.txt").write_text("v2")
            raise ValueError
    assert (d / "a.txt").read_text() == "v1"
    with atomic.atomic_dir(d) as tmp:
        (tmp / "b.txt").write_text("v3")
    assert sorted(p.name for p in d.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proc"]


def test_manifest_records_inputs_and_detects_changes(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    out = tmp_path / "out.txt"
    out.write_text("result")
    m = manifest.build("demo", config={"k": 5}, inputs={"in": inp}, outputs={"out": out}, seed=1,
                       metrics={"m": 0.5}, started=0.0)
    manifest.write(tmp_path, m)
    back = manifest.read(tmp_path, "demo")
    assert back["inputs"]["in"]["sha256"] == manifest.sha256_file(inp)
    assert back["seed"] == 1 and back["metrics"] == {"m": 0.5} and "torch" in back["versions"]
    assert manifest.is_complete(tmp_path, "demo", {"k": 5}, {"in": inp})
    assert not manifest.is_complete(tmp_path, "demo", {"k": 6}, {"in": inp})
    out.write_text("tampered")
    assert not manifest.is_complete(tmp_path, "demo", {"k": 5}, {"in": inp})
    with pytest.raises(InputError, match="stage 'other'"):
        manifest.read(tmp_path, "other")
    with pytest.raises(InputError, match="no such file"):
        manifest.read(tmp_path / "missing", "demo")


def test_seeding_reproduces_and_rng_state_roundtrips():
    import random

    import numpy as np
    import torch

    seeding.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(2))
    state = seeding.rng_state()
    b = (random.random(), np.random.rand(), torch.rand(2))
    seeding.set_rng_state(state)
    c = (random.random(), np.random.rand(), torch.rand(2))
    assert b[0] == c[0] and b[1] == c[1] and torch.equal(b[2], c[2])
    seeding.seed_everything(3)
    assert random.random() == a[0]
    assert torch.equal(torch.randint(0, 100, (5,), generator=seeding.torch_generator(7)),
                       torch.randint(0, 100, (5,), generator=seeding.torch_generator(7)))


def test_device_and_dtype_resolution():
    import torch

    dev = device.resolve_device("cpu")
    assert dev.type == "cpu" and device.resolve_dtype("auto", dev) == torch.float32
    with pytest.raises(ValueError):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            device.resolve_device("cuda")


def test_metrics_log_is_jsonl(tmp_path):
    with MetricsLog(tmp_path / "m.jsonl") as log:
        log.log({"losses/loss": 0.5}, step=1)
        log.log({"losses/loss": 0.25}, step=2)
    rows = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["losses/loss"] == 0.25


@pytest.mark.parametrize("how", ["module", "script", "cd"])
def test_stage_scripts_run_three_ways(how, tmp_path):
    """The seed's `cd code/<stage> && python x.py`, `python code/<stage>/x.py` and `python -m` all work."""
    env = {**os.environ, paths.ROOT_ENV: str(tmp_path)}
    cmd = {"module": ([sys.executable, "-m", "shielded_recrl.dataset.make_splits", "--help"], REPO),
           "script": ([sys.executable, "code/dataset/make_splits.py", "--help"], REPO),
           "cd": ([sys.executable, "make_splits.py", "--help"], REPO / "code" / "dataset")}[how]
    res = subprocess.run(cmd[0], cwd=cmd[1], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--k_core" in res.stdout


def test_no_sys_path_hacks_in_code():
    offenders = [p for p in (REPO / "code").rglob("*.py") if "sys.path" in p.read_text()]
    assert offenders == []


def test_metrics_log_tensorboard_is_optional(tmp_path, monkeypatch):
    """TensorBoard event files are written next to metrics.jsonl when tensorboard is installed; without it
    the log still works (metrics.jsonl is the record)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with MetricsLog(tmp_path / "a" / "m.jsonl", tensorboard=True) as log:
        assert log.tb is None
        log.log({"x": 1.0}, step=1)
    monkeypatch.undo()
    if real("tensorboard") is None:
        pytest.skip("tensorboard not installed")
    with MetricsLog(tmp_path / "b" / "m.jsonl", tensorboard=True) as log:
        log.log({"env/reward": 0.5, "note": "text is skipped"}, step=1)
    assert list((tmp_path / "b" / "tb").glob("events.out.tfevents.*"))
