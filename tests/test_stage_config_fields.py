"""Each setting declared once (issue #12): the warm start's and the ranker's stage configs inherit the
library dataclasses' fields instead of copying them, every library setting is a command-line flag and a
YAML key that reaches the library, and the library defaults are what they were."""

from __future__ import annotations

import dataclasses

import pytest

from shielded_recrl.common.configs import merge_yaml
from shielded_recrl.explainer import init_lora
from shielded_recrl.explainer.init_lora import LoraInitConfig
from shielded_recrl.explainer.sft import SFTSettings
from shielded_recrl.ranker import train_sasrec
from shielded_recrl.ranker.model import SASRecConfig, SASRecHyper
from shielded_recrl.ranker.training import SASRecTrainConfig

# (library dataclass, stage config that must inherit it)
PAIRS = [(SFTSettings, LoraInitConfig), (SASRecHyper, SASRecTrainConfig), (SASRecHyper, SASRecConfig)]


@pytest.mark.parametrize("lib,stage", PAIRS, ids=lambda c: c.__name__)
def test_library_fields_are_inherited_not_redeclared(lib, stage):
    assert issubclass(stage, lib)
    own = set(stage.__dict__.get("__annotations__", {}))
    lib_fields = {f.name for f in dataclasses.fields(lib)}
    assert not own & lib_fields, f"{stage.__name__} re-declares {sorted(own & lib_fields)} of {lib.__name__}"
    stage_fields = {f.name: f for f in dataclasses.fields(stage)}
    for f in dataclasses.fields(lib):  # the same declaration: default and help text come from the library
        assert stage_fields[f.name].default == f.default and stage_fields[f.name].metadata == f.metadata


def test_library_defaults_unchanged():
    assert dataclasses.asdict(SFTSettings()) == dict(
        micro_batch_size=4, grad_accum=4, lr=2e-4, weight_decay=0.0, warmup_steps=0, max_steps=0, epochs=1,
        eval_every=50, patience=3, grad_clip=1.0, seed=0)
    assert dataclasses.asdict(SASRecConfig(n_items=7)) == dict(
        n_items=7, hidden=64, n_layers=2, n_heads=2, dropout=0.2, max_len=50, activation="gelu",
        mask_padding_keys=True, scale_item_emb=True)
    assert dataclasses.asdict(SASRecTrainConfig()) == dict(
        dataset="ml100k", hidden=64, n_layers=2, n_heads=2, dropout=0.2, max_len=50, activation="gelu",
        mask_padding_keys=True, scale_item_emb=True, loss="ce", ce_chunk_items=0, negatives="uniform",
        n_negatives=256, gbce_t=0.75, lr=1e-3, weight_decay=0.0, batch_size=128,
        epochs=200, patience=10, window_stride=0, grad_clip=0.0, eval_every=1, eval_batch_size=1024, seed=0,
        device="auto", threads=2)
    with pytest.raises(TypeError):
        SASRecConfig()  # the catalogue size stays required


def _other_values(lib) -> dict:
    """A value different from the default for every field of ``lib`` (valid for the field's choices)."""
    out = {}
    for f in dataclasses.fields(lib):
        d = f.default
        if isinstance(d, bool):
            out[f.name] = not d
        elif isinstance(d, int):
            out[f.name] = d + 3
        elif isinstance(d, float):
            out[f.name] = d + 0.25
        else:
            out[f.name] = next(c for c in f.metadata["choices"] if c != d)
    return out


def _flags(values: dict) -> list[str]:
    argv = []
    for k, v in values.items():
        argv += ([f"--{k}"] if v else [f"--no-{k}"]) if isinstance(v, bool) else [f"--{k}", str(v)]
    return argv


def test_every_sft_setting_is_a_flag_and_a_yaml_key_that_reaches_the_library():
    want = _other_values(SFTSettings)
    cfg, _ = init_lora.parse(_flags(want))
    assert dataclasses.asdict(init_lora.sft_settings(cfg)) == want
    cfg = merge_yaml(LoraInitConfig, LoraInitConfig(), dict(want), "test.yaml", None)
    assert dataclasses.asdict(init_lora.sft_settings(cfg)) == want


def test_every_ranker_setting_is_a_flag_and_a_yaml_key_that_reaches_the_model():
    hyper = _other_values(SASRecHyper)
    train = {"lr": 5e-3, "weight_decay": 0.1, "batch_size": 64, "epochs": 3, "patience": 2, "window_stride": 10,
             "grad_clip": 1.0, "eval_every": 2, "eval_batch_size": 512, "seed": 4, "loss": "bce", "device": "cpu",
             "threads": 1, "ce_chunk_items": 512, "negatives": "popularity", "n_negatives": 32, "gbce_t": 0.5}
    assert set(hyper) | set(train) | {"dataset"} == {f.name for f in dataclasses.fields(SASRecTrainConfig)}
    for cfg in (train_sasrec.parse(_flags({**hyper, **train}) + ["--dataset", "steam"])[0],
                merge_yaml(SASRecTrainConfig, SASRecTrainConfig(), {**hyper, **train, "dataset": "steam"},
                           "test.yaml", None)):
        assert {k: getattr(cfg, k) for k in train} == train and cfg.dataset == "steam"
        model_cfg = cfg.model_config(30)
        assert dataclasses.asdict(model_cfg) == {**hyper, "n_items": 30}
