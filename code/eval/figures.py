"""Plot helpers for the aggregation stage (matplotlib, Agg backend): the fixed validation panel and the
ranking drift per run, KL, and the τ trade-off. Each ``plot_*`` function builds one figure and saves it as
PNG and PDF with :func:`save`.

Series are ``{tag: [(step, value), ...]}`` or, with a standard error, ``{tag: [(step, value, se), ...]}``
(steps ascending; ``se`` may be None). A band is ±1.96 SE (a pointwise 95% normal interval). Every figure
names its dataset in the title and its protocol on the axes, and carries a legend.

NOTE: the per-step training reward (``env/reward``, ``env/ctr``) is not plotted: each PPO step draws new
users, so its curve mostly shows which users were drawn (every mode, same seed, draws the same curve).
The panel curves compare the policy with the warm start on the same fixed pairs at every evaluation.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on the GPU box or in CI
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from shielded_recrl.common.atomic import atomic_path  # noqa: E402

Series = dict[str, list[tuple]]

Z95 = 1.96  # ±1.96 SE: a pointwise 95% normal interval
STEP_LABEL = "PPO step"
KL_LABEL = "KL to warm-start policy (nats per explanation)"
DQ_LABEL = "Δq, policy − warm start"
DCTR_LABEL = "Δ simulated CTR (pp), policy − warm start"
DRIFT_LABEL = "ΔNDCG@10, run's store − original\n(validation, all users, full ranking, seen masked)"


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


def _lines(ax, series: Series, colors: dict[str, str], labels: dict[str, str] | None = None) -> None:
    """One line per tag; a ±1.96 SE band where the points carry a standard error."""
    for tag, pts in series.items():
        steps, values = [p[0] for p in pts], [p[1] for p in pts]
        label = (labels or {}).get(tag, tag)
        ax.plot(steps, values, marker="o" if len(pts) < 30 else None, ms=3, color=colors[tag], label=label)
        band = [(s, v, p[2]) for s, v, p in zip(steps, values, pts) if len(p) > 2 and p[2] is not None]
        if band:
            s, v, se = zip(*band)
            ax.fill_between(s, [a - Z95 * b for a, b in zip(v, se)], [a + Z95 * b for a, b in zip(v, se)],
                            color=colors[tag], alpha=0.2, lw=0)


def _note(ax, text: str) -> None:
    ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=7, va="bottom", ha="left", color="0.3")


def tag_colors(tags: list[str]) -> dict[str, str]:
    """One colour per tag, stable across a dataset's figures."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {tag: cycle[i % len(cycle)] for i, tag in enumerate(tags)}


def panel_protocol(n_panel: dict[str, int | None]) -> str:
    """"fixed panel of N validation users, greedy, paired vs warm start" (N per run when they differ)."""
    sizes = set(n_panel.values())
    n = f"{next(iter(sizes))}" if len(sizes) == 1 and None not in sizes else "N"
    return f"fixed panel of {n} validation users, greedy, paired vs warm start"


def plot_panel(dataset: str, dq: Series, dctr: Series, n_panel: dict[str, int | None], colors: dict[str, str],
               stem: Path, without: list[str] = ()) -> list[Path]:
    """Two panels: Δq and Δ simulated CTR (pp) of the policy against the warm start on the fixed validation
    panel (``panel/dq``, ``panel/dctr_pp`` with their paired SEs), one line ± 1.96 SE band per run.
    ``n_panel``: panel users per run (None: not recorded); ``without``: runs that logged no panel rows,
    named in a note."""
    labels = {t: f"{t} (N={n})" if n is not None else t for t, n in n_panel.items()}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    _lines(a, dq, colors, labels)
    _lines(b, dctr, colors, labels)
    proto = panel_protocol({t: n_panel.get(t) for t in {*dq, *dctr}})
    for ax, ylabel, what in ((a, DQ_LABEL, "explanation quality q"), (b, DCTR_LABEL, "simulated CTR")):
        ax.axhline(0.0, color="black", ls="--", lw=1, label="warm start")
        ax.set(xlabel=STEP_LABEL, ylabel=ylabel, title=f"{dataset}: {what} on the validation panel")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    note = f"\nno panel rows (trained without --panel_users): {', '.join(without)}" if without else ""
    fig.suptitle(f"{proto}; band ±1.96 paired SE{note}", fontsize=9)
    return save(fig, stem)


def plot_kl(dataset: str, kl: Series, colors: dict[str, str], stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    _lines(ax, kl, colors)
    ax.set(xlabel=f"{STEP_LABEL} (each step's rollouts: freshly drawn training users)", ylabel=KL_LABEL,
           title=f"{dataset}: KL to the warm start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, stem)


def plot_drift(dataset: str, drift: Series, colors: dict[str, str], stem: Path,
               without_se: list[str] = ()) -> list[Path]:
    """The shield's picture: the live monitor's validation NDCG@10 with the run's store minus the original
    store's, per run, ± 1.96 × its paired SE over the validation users (``monitor/ndcg_diff_se``) where
    logged; ``without_se`` names the runs that logged no SE."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    _lines(ax, drift, colors)
    ax.axhline(0.0, color="black", ls="--", lw=1, label="original ranker")
    ax.set(xlabel=f"{STEP_LABEL} (band ±1.96 paired SE over users)", ylabel=DRIFT_LABEL,
           title=f"{dataset}: ranking drift during PPO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if without_se:
        _note(ax, f"no SE logged: {', '.join(without_se)}")
    return save(fig, stem)


def plot_tau_tradeoff(dataset: str, points: list[dict], x_label: str, stem: Path,
                      y: tuple[tuple[str, str], tuple[str, str]]) -> list[Path]:
    """ΔNDCG@10 against two outcomes, one point per ``tau<value>`` run.

    ``points``: dicts with ``tau`` (float), ``dndcg``, optional ``dndcg_se`` (horizontal error bar), and the
    two outcome keys of ``y`` (``((key, axis label), (key, axis label))``), each with an optional
    ``<key>_se`` (vertical error bar, ±1.96 SE); a None outcome omits the point from that panel.
    """
    points = sorted(points, key=lambda p: p["tau"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for ax, (key, label) in zip(axes, y):
        pts = [p for p in points if p[key] is not None]
        if pts:
            ax.errorbar([p["dndcg"] for p in pts], [p[key] for p in pts],
                        xerr=[Z95 * (p.get("dndcg_se") or 0.0) for p in pts],
                        yerr=[Z95 * (p.get(f"{key}_se") or 0.0) for p in pts], fmt="o-", capsize=3,
                        label="τ runs (±1.96 SE)")
            for p in pts:
                ax.annotate(f"τ={p['tau']:g}", (p["dndcg"], p[key]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.axvline(0.0, color="black", ls="--", lw=1, label="no ranking change")
        ax.set(xlabel=x_label, ylabel=label, title=f"{dataset}: shield energy τ trade-off")
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, stem)
