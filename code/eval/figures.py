"""Plot helpers for the aggregation stage (matplotlib, Agg backend): training curves per run and the τ
trade-off. Each ``plot_*`` function builds one figure and saves it as PNG and PDF with :func:`save`.

Series are ``{tag: [(step, value), ...]}`` (steps ascending). Every figure names its dataset in the
title and carries axis labels with units and a legend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on the GPU box or in CI
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from shielded_recrl.common.atomic import atomic_path  # noqa: E402

Series = dict[str, list[tuple[float, float]]]

STEP_LABEL = "PPO step"
REWARD_LABEL = "reward (simulated click, mean per rollout)"
CTR_LABEL = "simulated CTR (expected click probability)"
KL_LABEL = "KL to warm-start policy (nats per explanation)"
NDCG_LABEL = "validation NDCG@10 (full ranking, seen masked)"


def save(fig, stem: Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` atomically, close the figure, return both paths."""
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _lines(ax, series: Series, colors: dict[str, str]) -> None:
    for tag, pts in series.items():
        steps, values = zip(*pts)
        ax.plot(steps, values, marker="o" if len(pts) < 30 else None, ms=3, color=colors[tag], label=tag)


def tag_colors(tags: list[str]) -> dict[str, str]:
    """One colour per tag, stable across a dataset's figures."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {tag: cycle[i % len(cycle)] for i, tag in enumerate(tags)}


def plot_reward_ctr(dataset: str, reward: Series, ctr: Series, colors: dict[str, str], stem: Path) -> list[Path]:
    """Two panels: reward vs step and simulated CTR vs step, one line per run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    _lines(a, reward, colors)
    a.set(xlabel=STEP_LABEL, ylabel=REWARD_LABEL, title=f"{dataset}: reward")
    _lines(b, ctr, colors)
    b.set(xlabel=STEP_LABEL, ylabel=CTR_LABEL, title=f"{dataset}: simulated CTR")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, stem)


def plot_kl(dataset: str, kl: Series, colors: dict[str, str], stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    _lines(ax, kl, colors)
    ax.set(xlabel=STEP_LABEL, ylabel=KL_LABEL, title=f"{dataset}: KL to the warm start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, stem)


def plot_val_ndcg(dataset: str, ndcg: Series, orig: dict[str, float], colors: dict[str, str],
                  stem: Path) -> list[Path]:
    """The shield's picture: the live monitor's validation NDCG@10 with the run's store, per run, and the
    original ranker's value as a dashed line (one black line when all runs share it, else one per run)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    _lines(ax, ndcg, colors)
    distinct = sorted({round(v, 12) for v in orig.values()})
    if len(distinct) == 1:
        ax.axhline(distinct[0], color="black", ls="--", lw=1, label="original ranker")
    else:
        for tag, v in orig.items():
            ax.axhline(v, color=colors[tag], ls="--", lw=1, label=f"{tag}: original ranker")
    ax.set(xlabel=STEP_LABEL, ylabel=NDCG_LABEL, title=f"{dataset}: ranking drift during PPO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, stem)


def plot_tau_tradeoff(dataset: str, points: list[dict], x_label: str, stem: Path) -> list[Path]:
    """ΔNDCG@10 against final reward and against simulated CTR, one point per ``tau<value>`` run.

    ``points``: dicts with ``tau`` (float), ``dndcg``, optional ``dndcg_se`` (horizontal error bar),
    ``reward`` and ``ctr`` (either may be None: that panel then omits the point).
    """
    points = sorted(points, key=lambda p: p["tau"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for ax, key, label in ((axes[0], "reward", "reward at the last PPO step (simulated click)"),
                           (axes[1], "ctr", "simulated CTR at the last PPO step\n(expected click probability)")):
        pts = [p for p in points if p[key] is not None]
        if pts:
            ax.errorbar([p["dndcg"] for p in pts], [p[key] for p in pts],
                        xerr=[p.get("dndcg_se") or 0.0 for p in pts], fmt="o-", capsize=3, label="τ runs")
            for p in pts:
                ax.annotate(f"τ={p['tau']:g}", (p["dndcg"], p[key]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.axvline(0.0, color="black", ls="--", lw=1, label="no ranking change")
        ax.set(xlabel=x_label, ylabel=label, title=f"{dataset}: shield energy τ trade-off")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, stem)
