"""Projection stage: the ranking subspace ``Q`` of a trained ranker → ``checkpoints/basis_<D>.pt``.

    python code/projection/run_basis.py --dataset ml100k --proj_dir .          # the seed's form
    python code/projection/run_basis.py --ranker_ckpt checkpoints/sasrec_ml100k.pt --energy 0.99 \
        --recipe both --max_users 200000 --output checkpoints/basis_ml100k.pt

User states ``h_u`` (last position of each training user's train history) and the item table without
its padding row are block-normalised, stacked, and decomposed through their d × d Gram matrix
(``basis.py`` says why); ``Q`` keeps the right singular vectors up to cumulative energy ``--energy``.
The user states are made ``--batch_size`` users at a time and summed into the users' d × d Gram
(``basis.block_gram``): the U × d matrix is never held (DESIGN.md §7).
Writes the basis (weights_only-loadable) and ``basis_<D>.manifest.json`` beside it, and prints the
spectrum (rank reached at 0.9/0.95/0.99/0.999).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Iterator

import torch

from shielded_recrl.common import atomic, manifest
from shielded_recrl.common.configs import parse_config
from shielded_recrl.common.device import resolve_device
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import setup_logging
from shielded_recrl.common.paths import checkpoints_dir, proc_dir, repo_root, resolve_user_path
from shielded_recrl.common.seeding import seed_everything
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.projection import artifacts
from shielded_recrl.projection.basis import RECIPES, basis_from_grams, block_gram, energy_curve, spectrum_summary
from shielded_recrl.projection.shield import ShieldConfig
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker
from shielded_recrl.ranker.data import histories

STAGE = "projection"


@dataclasses.dataclass
class BasisConfig:
    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    proj_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "repository root the default paths live under (the seed's flag; default: this repository)"})
    ranker_ckpt: str | None = dataclasses.field(default=None, metadata={
        "help": "ranker checkpoint (default: <proj_dir>/checkpoints/sasrec_<dataset>.pt)"})
    output: str | None = dataclasses.field(default=None, metadata={
        "help": "basis file (default: <proj_dir>/checkpoints/basis_<dataset>.pt)"})
    energy: float = dataclasses.field(default=ShieldConfig.energy, metadata={
        "help": "cumulative energy τ kept in Q; 1.0 = the whole space (the shield then equals frozen)"})
    trust_radius: float | None = dataclasses.field(default=ShieldConfig.trust_radius, metadata={
        "help": "ρ recorded in the basis file as the trainer's default trust radius (it does not change Q)"})
    recipe: str = dataclasses.field(default="both", metadata={"help": "both | users | items", "choices": RECIPES})
    max_users: int | None = dataclasses.field(default=None, metadata={
        "help": "use a seeded sample of at most this many training users (default: all)"})
    batch_size: int = dataclasses.field(default=2048, metadata={
        "help": "users per forward pass: memory is O(batch_size · max_len · d), the basis does not depend on it"})
    seed: int = 0
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cpu | cuda"})


@torch.no_grad()
def user_state_batches(model, seqs, max_users: int | None, batch_size: int, seed: int, device
                       ) -> Iterator[torch.Tensor]:
    """``h_u`` (B, d), float32 on CPU, ``batch_size`` users at a time: the state at the last position of
    each training user's (last ``max_len``) train items; users with no train item are skipped, and
    ``max_users`` keeps a seeded sample (in user order)."""
    seqs = [s for s in seqs if len(s) > 0]
    if max_users is not None and len(seqs) > max_users:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(seqs), generator=g)[:max_users].sort().values.tolist()
        seqs = [seqs[i] for i in keep]
    model.eval()
    for i in range(0, len(seqs), batch_size):
        yield model.user_state(histories(seqs[i:i + batch_size], model.cfg.max_len).to(device)).float().cpu()


def user_states(model, seqs, max_users: int | None, batch_size: int, seed: int, device) -> torch.Tensor:
    """``h_u`` (U, d): :func:`user_state_batches` stacked (for studies and tests; the stage sums Grams)."""
    return torch.cat(list(user_state_batches(model, seqs, max_users, batch_size, seed, device)))


def main(argv=None) -> dict:
    cfg, ns = parse_config(BasisConfig, argv, description=__doc__, default_yaml="experiments/projection.yaml",
                           extra_args=lambda p: p.add_argument(
                               "--force", action="store_true",
                               help="recompute even when the basis' manifest says it is complete"))
    setup_logging()
    started = time.time()
    seed_everything(cfg.seed)
    root = resolve_user_path(cfg.proj_dir) if cfg.proj_dir else repo_root()
    ckpt_path = resolve_user_path(cfg.ranker_ckpt, root) if cfg.ranker_ckpt else \
        checkpoints_dir(root) / f"sasrec_{cfg.dataset}.pt"
    out_path = resolve_user_path(cfg.output, root) if cfg.output else checkpoints_dir(root) / f"basis_{cfg.dataset}.pt"
    if not 0 < cfg.energy <= 1:
        raise InputError("--energy", "a cumulative energy share τ in (0, 1]", str(cfg.energy))
    print("[projection] config:", json.dumps(dataclasses.asdict(cfg)))
    if not ns.force and manifest.is_complete(artifacts.manifest_path(out_path), STAGE, dataclasses.asdict(cfg),
                                             {"ranker": ckpt_path, "processed": proc_dir(cfg.dataset, root)}):
        print(f"[projection] {out_path} is complete for this config and ranker (use --force to recompute)")
        return manifest.read(artifacts.manifest_path(out_path), STAGE)["metrics"]

    device = resolve_device(cfg.device)
    data = load_processed(cfg.dataset, root=root)
    model, ckpt = load_ranker(ckpt_path, expect_id_map=data.id_map_sha256, map_location=device)
    ranker_sha = checkpoint_sha256(ckpt_path)

    t0 = time.time()
    # METHOD: the users' Gram, summed batch by batch (basis.py, "Batched"): H (U × d) is never held
    H = block_gram(user_state_batches(model, data.sequences("train"), cfg.max_users, cfg.batch_size, cfg.seed,
                                      device))
    t_states = time.time() - t0
    t0 = time.time()
    E_items = block_gram([model.item_table.detach()[1:].float().cpu()])  # padding row 0 excluded
    basis = basis_from_grams(H, E_items, cfg.energy, cfg.recipe)
    t_svd = time.time() - t0
    S = basis["singular_values"]
    summary = spectrum_summary(S)
    basis.update({"trust_radius": cfg.trust_radius, "ranker_sha256": ranker_sha, "ranker_ckpt": str(ckpt_path),
                  "dataset": cfg.dataset,
                  "n_users": H.rows, "n_items": E_items.rows, "spectrum": summary})
    artifacts.save_basis(out_path, basis)

    curve = energy_curve(S)
    print(f"[projection] {cfg.recipe}: {H.rows} user states + {E_items.rows} items, d = {basis['d']}; "
          f"states and their Gram {t_states:.2f}s, Gram-eigh SVD {t_svd:.3f}s")
    print("[projection] rank at energy " + ", ".join(f"{k[5:]}: {v}" for k, v in summary.items())
          + f"  (of d = {basis['d']})")
    print(f"[projection] top singular values {[round(float(s), 2) for s in S[:8]]}; energy of the first 8 "
          f"{float(curve[min(7, len(curve) - 1)]):.3f}")
    print(f"[projection] τ = {cfg.energy} → Q rank {basis['rank']} ({basis['d'] - basis['rank']} free directions); "
          f"wrote {out_path}")

    metrics = {"rank": basis["rank"], "d": basis["d"], **summary, "seconds_states": round(t_states, 3),
               "seconds_svd": round(t_svd, 4)}
    m = manifest.build(STAGE, config=dataclasses.asdict(cfg), inputs={"ranker": ckpt_path,
                       "processed": proc_dir(cfg.dataset, root)}, outputs={"basis": out_path}, seed=cfg.seed,
                       metrics=metrics, started=started, extra={"ranker_sha256": ranker_sha})
    atomic.write_json(artifacts.manifest_path(out_path), m)
    return metrics


if __name__ == "__main__":
    run_cli(main)
