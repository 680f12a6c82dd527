"""Every shipped YAML under ``experiments/`` parses with its stage's config (STYLE.md: "a test checks every
shipped YAML against the stage's signature").

``CONFIGS`` maps a file name to the stage config class; a YAML with no entry (or with two) fails
``test_every_shipped_yaml_has_a_stage``, so a new file cannot be skipped silently. Each file is merged with
no dataset and with every dataset of its ``per_dataset`` block, exactly as ``parse_config`` does; unknown
keys, wrong types and a config's own checks (``__post_init__``) are errors.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from pathlib import Path

import pytest
import yaml

from shielded_recrl.common.configs import load_yaml, merge_yaml
from shielded_recrl.dataset.loaders import DATASETS

from test_explainer_unit import converted_smollm2, smollm2_dir, tok  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

CONFIGS = {  # file-name pattern → "module:Class" of the config the stage parses it into
    "recrl_*.yaml": "shielded_recrl.trainer.config:RecRLConfig",          # run_recrl_cli.py
    "recrl.yaml": "shielded_recrl.trainer.config:RecRLConfig",            # smoke_ci/
    "explainer*.yaml": "shielded_recrl.explainer.init_lora:LoraInitConfig",
    "sasrec.yaml": "shielded_recrl.ranker.training:SASRecTrainConfig",    # train_sasrec.py
    "projection.yaml": "shielded_recrl.projection.run_basis:BasisConfig",
    "projection_study*.yaml": "shielded_recrl.projection.shield_study:StudyConfig",
    "eval.yaml": "shielded_recrl.eval.evaluate_run:EvalConfig",
}


def shipped_yamls() -> list[Path]:
    return sorted(EXPERIMENTS.glob("**/*.yaml"))


def patterns_for(path: Path) -> list[str]:
    return [pat for pat in CONFIGS if fnmatch.fnmatchcase(path.name, pat)]


def config_class(path: Path) -> type:
    module, name = CONFIGS[patterns_for(path)[0]].split(":")
    return getattr(importlib.import_module(module), name)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_every_shipped_yaml_has_a_stage():
    files = shipped_yamls()
    assert len(files) >= 10, files  # the glob finds the shipped configs, including experiments/smoke_ci/
    unmapped = [rel(f) for f in files if len(patterns_for(f)) != 1]
    assert not unmapped, f"add each to CONFIGS in {rel(Path(__file__))} (exactly one pattern each): {unmapped}"
    unused = [pat for pat in CONFIGS if not any(fnmatch.fnmatchcase(f.name, pat) for f in files)]
    assert not unused, f"CONFIGS patterns that match no shipped file: {unused}"


@pytest.mark.parametrize("path", shipped_yamls(), ids=rel)
def test_shipped_yaml_parses_with_its_stage_config(path):
    cls = config_class(path)
    names = {f.name for f in dataclasses.fields(cls)}
    per_dataset = yaml.safe_load(path.read_text()).get("per_dataset") or {}
    unknown = sorted(set(per_dataset) - set(DATASETS))
    assert not unknown, f"{rel(path)}: per_dataset blocks for unknown datasets {unknown} (known: {sorted(DATASETS)})"
    if per_dataset:
        assert "dataset" in names, f"{rel(path)}: per_dataset blocks, but {cls.__name__} has no dataset to pick one"
    for dataset in (None, *per_dataset):
        cfg = merge_yaml(cls, cls(), load_yaml(path), path, dataset)  # load afresh: merge_yaml pops per_dataset
        assert isinstance(cfg, cls)
        top = {k: v for k, v in load_yaml(path).items() if k != "per_dataset"}
        layer = {**top, **(per_dataset.get(dataset) or {})} if dataset is not None else top
        for key, value in layer.items():  # every key landed (a YAML list may become a list of the field's type)
            got = getattr(cfg, key)
            assert got == value or (isinstance(value, list) and list(got) == value), (rel(path), dataset, key)
        if cls.__name__ == "LoraInitConfig":
            assert cfg.explanation_max_len < cfg.max_seq_len_explainer


def test_learning_budgets_let_every_ml100k_reference_text_finish(ml100k_processed, tok):
    """The learning configuration samples up to ``max_new_tokens`` tokens and its warm start trains on
    ``explanation_max_len`` − 1 reference tokens plus the end of turn: the longest ML-100K reference text
    (56 SmolLM2 tokens) fits both, where the earlier budget of 40 cut 1.4% of them."""
    lengths = [len(ids) for ids in tok(list(ml100k_processed.references["text"]), add_special_tokens=False)["input_ids"]]
    learn = load_yaml(EXPERIMENTS / "recrl_learn.yaml")
    warm = load_yaml(EXPERIMENTS / "explainer.yaml")
    assert max(lengths) <= learn["max_new_tokens"] <= learn["explanation_max_len"], (max(lengths), learn)
    assert max(lengths) <= warm["explanation_max_len"], (max(lengths), warm)
    # the same prompt budget in both: PPO prompts show what the warm start was trained on
    assert learn["max_seq_len_explainer"] - learn["explanation_max_len"] == \
        warm["max_seq_len_explainer"] - warm["explanation_max_len"]
