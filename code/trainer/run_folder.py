"""A Shielded PPO run on disk, as one object: file I/O only, no training logic.

::

    checkpoints/recrl/<D>/<tag>/
        step-XXXXXX/
            policy_trainable.safetensors   LoRA tensors (exactly the trainable ones)
            bridge.safetensors             the bridge (absent when the warm start has none)
            value_head.safetensors         the PPO value head
            state.pt                       store delta E − E0, optimizer, RNG and generator states, step, …
            config.json                    the run's RecRLConfig + its mode + the input paths as resolved
            manifest.json                  exactly the five files above (sha256), verified on load
        latest                             {"step", "folder"}: the run's newest checkpoint
    checkpoints/recrl/<D>/latest           {"tag", "step", "folder": "<tag>/step-XXXXXX"}: the dataset's newest

The trainer's resume, the evaluation and the audit all open a checkpoint through :func:`open_checkpoint`
and rebuild its explainer through :func:`build_explainer`, so what a run folder holds is known here only.
Dataset and tag come from the checkpoint's own ``config.json``, never from path components.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..common import atomic, manifest
from ..common.configs import to_dict
from ..common.errors import InputError
from ..common.paths import checkpoints_dir, resolve_user_path
from .config import RecRLConfig

if TYPE_CHECKING:  # torch is imported where tensors are read or written, so the audit stays light
    import torch

STAGE = "recrl"
STEP_RE = re.compile(r"step-(\d{6})")
POLICY, BRIDGE, VALUE_HEAD, STATE, CONFIG = ("policy_trainable.safetensors", "bridge.safetensors",
                                             "value_head.safetensors", "state.pt", "config.json")
RESERVED = ("mode", "resolved")  # config.json keys that are not RecRLConfig fields
WEIGHTS = ("recrl", "warm_start")
# Names a run's tag may not take: the pointer file, and the folders other stages write under logs/<D>/
# (the ranker's and the warm start's STAGE, evaluation's baseline cache; a test keeps this list in sync).
RESERVED_TAGS = ("latest", "ranker", "lora_init", "projection", "projection_study", "dataset", "eval_baselines")
log = logging.getLogger("recrl")


def run_dir(dataset: str, tag: str) -> Path:
    return checkpoints_dir() / "recrl" / dataset / tag


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# --- config.json ↔ RecRLConfig ----------------------------------------------------------------------
def config_record(cfg: RecRLConfig, resolved: dict[str, str]) -> dict:
    """What ``config.json`` holds: the flags as typed (paths may be relative to the folder the run started
    from), the mode, and ``resolved``: the input paths as found (root-relative where possible)."""
    return {**to_dict(cfg), "mode": cfg.mode, "resolved": dict(resolved)}


def config_from_record(record: dict, source: Path) -> tuple[RecRLConfig, dict[str, str]]:
    """``config.json`` → (the same typed :class:`RecRLConfig`, resolved paths).

    Unknown keys are an error (a checkpoint from another version of the stage); keys that are missing (a
    setting added after the checkpoint was written) take the stage default and are logged by name.
    """
    if not isinstance(record, dict):
        raise InputError(source, "a JSON object of RecRLConfig keys", type(record).__name__)
    names = {f.name for f in dataclasses.fields(RecRLConfig)}
    unknown = sorted(set(record) - names - set(RESERVED))
    if unknown:
        raise InputError(source, f"keys of RecRLConfig (and {RESERVED})", f"unknown key(s) {unknown}",
                         "This checkpoint was written by another version of the trainer.")
    missing = sorted(names - set(record))
    if missing:
        log.warning("%s has no %s (written before they existed): using the defaults %s", source, missing,
                    {k: getattr(RecRLConfig(), k) for k in missing})
    try:
        cfg = RecRLConfig(**{k: v for k, v in record.items() if k in names})
    except (TypeError, ValueError) as err:
        raise InputError(source, "a valid RecRLConfig", str(err)) from None
    if record.get("mode") is not None and record["mode"] != cfg.mode:
        raise InputError(source, f"mode {cfg.mode!r} (from its flags)", f"mode {record['mode']!r}")
    return cfg, dict(record.get("resolved") or {})


# --- one checkpoint ---------------------------------------------------------------------------------
class Checkpoint(NamedTuple):
    """One ``step-XXXXXX`` folder, opened and verified."""

    folder: Path
    step: int
    config: RecRLConfig  # the run's config, as it was when this step was saved
    resolved: dict  # input paths as found at save time (root-relative where possible)

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def tag(self) -> str:
        return self.config.tag

    @property
    def mode(self) -> str:
        return self.config.mode

    def input_path(self, key: str) -> Path:
        """``ranker_ckpt`` / ``explainer_ckpt`` / ``projection_basis`` as the run found it, checked to exist."""
        defaults = {"ranker_ckpt": f"sasrec_{self.dataset}.pt", "explainer_ckpt": f"lora_init_{self.dataset}"}
        rec = self.resolved.get(key) or getattr(self.config, key)
        path = resolve_user_path(rec) if rec else checkpoints_dir() / defaults[key]
        if not path.exists():
            raise InputError(path, f"the run's {key} (from {self.folder / CONFIG})", "no such file",
                             "Use the checkout (or RECRL_ROOT) the run was trained in.")
        return path

    def state(self) -> dict:
        import torch

        return torch.load(self.folder / STATE, map_location="cpu", weights_only=True)

    def store(self, E0: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """The run's item store ``E0 + ΔE`` (``E0``: the ranker's original table)."""
        delta = (state or self.state())["store_delta"]
        if delta.shape != E0.shape:
            raise InputError(self.folder / STATE, f"a store delta of shape {tuple(E0.shape)} (the ranker's)",
                             str(tuple(delta.shape)), "Use the ranker the run was trained with.")
        return E0 + delta.to(E0)


def _verify_files(folder: Path, man: dict) -> None:
    """Every file the manifest lists exists *in this folder* and hashes as recorded (so a checkpoint
    folder stays valid when it is moved or copied elsewhere)."""
    for name, rec in man.get("outputs", {}).items():
        p = folder / Path(rec["path"]).name
        if not p.exists():
            raise InputError(p, f"output {name!r} listed in {manifest.manifest_path(folder)}", "no such file",
                             "The checkpoint is incomplete; re-run the trainer.")
        got = manifest.sha256_path(p)
        if got != rec["sha256"]:
            raise InputError(p, f"sha256 {rec['sha256'][:12]}… recorded in {manifest.manifest_path(folder)}",
                             f"sha256 {got[:12]}…", "The file changed after it was written; re-run the trainer.")


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """A step folder → :class:`Checkpoint`, after checking its manifest lists every file and they hash as
    recorded, and that the manifest's step and config agree with the folder and its ``config.json``."""
    folder = Path(folder)
    m = STEP_RE.fullmatch(folder.name)
    if not m or not folder.is_dir():
        raise InputError(folder, "a PPO checkpoint folder (step-XXXXXX)",
                         "no such folder" if m else f"a folder named {folder.name!r}",
                         "Train the run first: python code/trainer/run_recrl_cli.py ...")
    man = manifest.read(folder, STAGE)
    _verify_files(folder, man)
    listed = set(man.get("outputs", {}))
    need = {STATE, CONFIG, POLICY, VALUE_HEAD}
    if not need <= listed:
        raise InputError(manifest.manifest_path(folder), f"outputs {sorted(need)}", f"outputs {sorted(listed)}",
                         "The checkpoint is incomplete or from another version; re-run the trainer.")
    step = int(m.group(1))
    if int(man.get("step", step)) != step:
        raise InputError(manifest.manifest_path(folder), f"step {step} (from the folder name)", str(man["step"]))
    try:
        record = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise InputError(folder / CONFIG, "valid JSON", f"a parse error ({err})") from None
    cfg, resolved = config_from_record(record, folder / CONFIG)
    return Checkpoint(folder, step, cfg, resolved)


def _read_pointer(path: Path, keys: tuple[str, ...]) -> dict:
    if not path.exists():
        raise InputError(path, "the latest-checkpoint pointer of a trained run", "no such file",
                         "Train a run first (code/trainer/run_recrl_cli.py) or pass a step-XXXXXX folder.")
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"a JSON latest-checkpoint pointer with {keys}", f"{type(err).__name__}: {err}",
                         "Re-run the trainer, or pass a step-XXXXXX folder.") from None
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise InputError(path, f"a JSON object with keys {keys}", repr(obj),
                         "Re-run the trainer, or pass a step-XXXXXX folder.")
    return obj


FORMS = ("checkpoints/recrl/<D>/latest, checkpoints/recrl/<D>/<T>/latest or "
         "checkpoints/recrl/<D>/<T>/step-XXXXXX")


def resolve(path: str | Path) -> Checkpoint:
    """Any of the three forms (:data:`FORMS`) → the checkpoint it names. A ``latest`` pointer's folder is
    relative to the pointer's own folder; its step (and tag, for the dataset-level one) must agree with
    the checkpoint's config."""
    path = resolve_user_path(path)
    if path.name in ("latest", "best"):
        ptr = _read_pointer(path, ("step", "folder"))
        ckpt = open_checkpoint(path.parent / str(ptr["folder"]))
        if int(ptr["step"]) != ckpt.step:
            raise InputError(path, f"step {ptr['step']} (the pointer's)", f"folder {ckpt.folder.name}",
                             "Re-run the trainer.")
        if "tag" in ptr and str(ptr["tag"]) != ckpt.tag:
            raise InputError(path, f"tag {ptr['tag']!r} (the pointer's)", f"tag {ckpt.tag!r} in {ckpt.folder / CONFIG}",
                             "Re-run the trainer.")
        return ckpt
    if STEP_RE.fullmatch(path.name):
        return open_checkpoint(path)
    raise InputError(str(path), FORMS, f"a path named {path.name!r}", "Pass one of those forms.")


def find(dataset: str, tag: str, step: int = 0, pointer: str = "latest") -> Checkpoint:
    """Checkpoint ``step`` of run ``<dataset>/<tag>`` (0: the one its ``pointer`` names — ``latest``, or
    ``best``: the checkpoint the validation panel selected), checked to belong to that run."""
    run = run_dir(dataset, tag)
    if step <= 0 and not (run / pointer).exists():
        raise InputError(run / pointer, f"the {pointer}-checkpoint pointer of a PPO run", "no such file",
                         f"Train it first: python code/trainer/run_recrl_cli.py --dataset {dataset} --tag {tag} ..."
                         + (" --panel_users N (the panel selects 'best')" if pointer == "best" else ""))
    ckpt = resolve(run / (step_name(step) if step > 0 else pointer))
    if (ckpt.dataset, ckpt.tag) != (dataset, tag):
        raise InputError(ckpt.folder / CONFIG, f"a checkpoint of run {dataset}/{tag}",
                         f"run {ckpt.dataset}/{ckpt.tag}", "The folder was moved or copied; re-run the trainer.")
    return ckpt


def latest(dataset: str, tag: str) -> Path | None:
    """The run's newest step folder, or None when it has none (``--resume auto`` then starts fresh)."""
    pointer = run_dir(dataset, tag) / "latest"
    if not pointer.exists():
        return None
    return run_dir(dataset, tag) / str(_read_pointer(pointer, ("step", "folder"))["folder"])


# --- writing ------------------------------------------------------------------------------------------
def mark_best(cfg: RecRLConfig, step: int) -> None:
    """Point the run's ``best`` at a saved step (the validation panel's choice)."""
    atomic.write_json(run_dir(cfg.dataset, cfg.tag) / "best", {"step": step, "folder": step_name(step)})


def save_step(cfg: RecRLConfig, resolved: dict[str, str], step: int, *, explainer, value_head, state: dict,
              started: float) -> Path:
    """Write ``step-XXXXXX/`` atomically, then move both ``latest`` pointers to it. ``state``: everything
    ``state.pt`` holds (store delta, optimizer, RNG, generator states, ...)."""
    import torch
    from safetensors.torch import save_file

    run = run_dir(cfg.dataset, cfg.tag)
    out = run / step_name(step)
    with atomic.atomic_dir(out) as tmp:
        trainable = {n: p.detach().cpu().contiguous() for n, p in explainer.model.named_parameters()
                     if p.requires_grad}
        save_file(trainable, tmp / POLICY)
        files = [POLICY, VALUE_HEAD, STATE, CONFIG]
        if explainer.bridge is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in explainer.bridge.state_dict().items()},
                      tmp / BRIDGE)
            files.append(BRIDGE)
        save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()}, tmp / VALUE_HEAD)
        torch.save({**state, "step": step}, tmp / STATE)
        atomic.write_json(tmp / CONFIG, config_record(cfg, resolved))
        m = manifest.build(STAGE, config=to_dict(cfg), outputs={n: tmp / n for n in files}, seed=cfg.seed,
                           started=started, extra={"step": step})
        for rec in m["outputs"].values():  # the temporary folder is renamed to ``out`` on success
            rec["path"] = rec["path"].replace(tmp.name, out.name, 1)
        manifest.write(tmp, m)
    atomic.write_json(run / "latest", {"step": step, "folder": out.name})
    atomic.write_json(run.parent / "latest", {"tag": cfg.tag, "step": step, "folder": f"{cfg.tag}/{out.name}"})
    return out


# --- reading back into a live explainer -------------------------------------------------------------
def load_policy(ckpt: Checkpoint, explainer, value_head=None) -> None:
    """Copy the checkpoint's LoRA, bridge (and value head) tensors into a warm-start explainer."""
    import torch
    from safetensors.torch import load_file

    params = dict(explainer.model.named_parameters())
    trained = load_file(ckpt.folder / POLICY)
    unknown = sorted(set(trained) - set(params))
    if unknown:
        raise InputError(ckpt.folder / POLICY, "LoRA tensors of the warm start's architecture",
                         f"unknown tensors such as {unknown[0]}", "Use the warm start the run was trained from.")
    with torch.no_grad():
        for name, t in trained.items():
            params[name].copy_(t.to(params[name]))
        if explainer.bridge is not None:
            explainer.bridge.load_state_dict(load_file(ckpt.folder / BRIDGE))
        if value_head is not None:
            value_head.load_state_dict(load_file(ckpt.folder / VALUE_HEAD))


def build_explainer(cfg: RecRLConfig, warm_dir: Path, *, data, ranker, ranker_sha256: str, device, dtype,
                    weights: str = "warm_start", checkpoint: Checkpoint | None = None, trainable: bool = False):
    """The explainer of a run: the warm start in ``warm_dir`` with the run's prompt budget
    (``cfg.max_prompt_len``) and, for ``weights="recrl"``, the checkpoint's LoRA and bridge. The store ``E``
    is not touched here: the trainer (through the shield's mode) and the evaluation set it."""
    from ..explainer.checkpoint import load_explainer

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}; found {weights!r}")
    if weights == "recrl" and checkpoint is None:
        raise ValueError("weights='recrl' needs the checkpoint to read them from")
    explainer, _ = load_explainer(warm_dir, items=data.items, ranker=ranker, device=device, dtype=dtype,
                                  quant="int8" if cfg.int8 else "none", trainable=trainable,
                                  expect_id_map=data.id_map_sha256, ranker_sha256=ranker_sha256)
    explainer.settings = dataclasses.replace(explainer.settings, max_prompt_len=cfg.max_prompt_len)
    if weights == "recrl":
        load_policy(checkpoint, explainer)
    return explainer
