"""Typed per-stage configs: dataclass defaults → YAML (``experiments/*.yaml``) → CLI flags.

A stage declares one dataclass; :func:`parse_config` builds the argparse flags from its fields, reads
an optional YAML file and applies, in order: the dataclass defaults, the YAML's top-level keys, the
YAML's ``per_dataset: {<dataset>: {...}}`` block for the chosen dataset, then the flags the user typed.
Unknown keys in a YAML file are errors that name the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from .errors import InputError
from .paths import resolve_user_path, shipped_file

C = TypeVar("C")


def _field_type(cls, field: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    tp = hints[field.name]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X] → X
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def _coerce(cls, name: str, value: Any, source: str):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp = _field_type(cls, field)
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            return bool(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if typing.get_origin(tp) in (list, tuple):
            inner = typing.get_args(tp)[0]
            return [inner(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(source, f"`{name}` of type {getattr(tp, '__name__', tp)}", f"{value!r}") from None
    return value


def load_yaml(path: Path) -> dict:
    if not path.exists():
        raise InputError(path, "a YAML config file", "no such file", "Check the --config path.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, "valid YAML", f"a parse error ({err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a mapping of config keys", type(data).__name__)
    return data


def merge_yaml(cls: type[C], cfg: C, data: dict, source: Path, dataset: str | None) -> C:
    names = {f.name for f in dataclasses.fields(cls)}
    per_dataset = data.pop("per_dataset", {}) or {}
    layers = [data]
    if dataset is not None and dataset in per_dataset:
        layers.append(per_dataset[dataset])
    for layer in layers:
        unknown = sorted(set(layer) - names)
        if unknown:
            raise InputError(source, f"keys of {cls.__name__} ({', '.join(sorted(names))})",
                             f"unknown key(s) {unknown}", "Fix the spelling or remove them.")
        cfg = dataclasses.replace(cfg, **{k: _coerce(cls, k, v, str(source)) for k, v in layer.items()})
    return cfg


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--name`` flag per field; defaults are suppressed so we know what the user typed."""
    for field in dataclasses.fields(cls):
        tp = _field_type(cls, field)
        help_text = field.metadata.get("help", "")
        flag = f"--{field.name}"
        if tp is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
            parser.add_argument(f"--no-{field.name}", dest=field.name, action="store_false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif typing.get_origin(tp) in (list, tuple):
            inner = typing.get_args(tp)[0]
            parser.add_argument(flag, dest=field.name, type=inner, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(flag, dest=field.name, type=tp, choices=choices, default=argparse.SUPPRESS,
                                help=help_text)


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str = "",
                 default_yaml: str | None = None, extra_args=None) -> tuple[C, argparse.Namespace]:
    """Parse ``argv`` into ``cls``. Returns the config and the namespace (for stage-only flags).

    ``default_yaml`` (relative to the repository root) is used when ``--config`` is not given and the
    file exists. ``extra_args(parser)`` may add flags that are not config fields (e.g. ``--force``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file of config keys (default: %(default)s → "
                        f"{default_yaml or 'none'})")
    add_dataclass_flags(parser, cls)
    if extra_args is not None:
        extra_args(parser)
    ns = parser.parse_args(argv)
    given = vars(ns)
    cfg = cls()
    dataset = given.get("dataset", getattr(cfg, "dataset", None))
    yaml_path = given.pop("config", None)
    path = resolve_user_path(yaml_path) if yaml_path else (shipped_file(default_yaml) if default_yaml else None)
    if path is not None and (yaml_path or path.exists()):
        cfg = merge_yaml(cls, cfg, load_yaml(path), path, dataset)
    names = {f.name for f in dataclasses.fields(cls)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if k in names})
    ns.config = str(path) if path is not None and path.exists() else None
    return cfg, ns


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
