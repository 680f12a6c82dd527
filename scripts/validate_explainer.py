"""Score explainer checkpoints on fixed validation pairs, without training: choosing a warm start on validation.

    python scripts/validate_explainer.py --dataset ml100k --config experiments/recrl_learn.yaml \
        --explainer_ckpt checkpoints/lora_init_ml100k_b56_reason204_rl \
        --vs checkpoints/lora_init_ml100k_b56_reason204 --panel_users 256

Builds each checkpoint's run exactly as ``run_recrl_cli.py`` would at step 0 (same config flags; the store
frozen unless a mode flag is given, which changes nothing here since no step is taken) and scores PPO's
fixed validation panel (``--panel_users`` seeded validation users, each with its top slate item; the first 32
are the 32 a run's default panel uses) under the panel's decoding (``--panel_decoding``, ``--panel_samples``,
the same seeded draws for every checkpoint). Prints each checkpoint's levels — q, simulated CTR,
faithfulness@1 and the rates of self-reference, hallucinated and invented titles, prompt copy and unfinished
texts, q's rules (docs/simulator.md) — and, with ``--vs``, checkpoint − vs on the same pairs ± paired SE (two-sided
paired t-test p). Test users are never touched. Writes nothing.
"""

from __future__ import annotations

import dataclasses
import gc

from shielded_recrl.common.configs import parse_config
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.eval.compare import paired
from shielded_recrl.trainer import run_recrl_cli as R
from shielded_recrl.trainer.config import RecRLConfig

FIELDS = (("q", "q", 1.0, 3), ("CTR %", "click", 100.0, 2), ("faith@1 %", "faith1", 100.0, 1),
          ("self-ref %", "self_reference", 100.0, 1), ("halluc %", "hallucinated", 100.0, 1),
          ("invented %", "invented_title", 100.0, 1), ("copy %", "prompt_copy", 100.0, 1),
          ("unfinished %", "unfinished", 100.0, 1))  # (column, field, scale, decimals)


def parse(argv=None) -> tuple[RecRLConfig, str]:
    def extra(p):
        p.add_argument("--vs", default="", help="a second explainer checkpoint, scored on the same pairs "
                                                "(differences are --explainer_ckpt − --vs)")

    try:
        cfg, ns = parse_config(RecRLConfig, argv, description=__doc__.splitlines()[0],
                               default_yaml="experiments/recrl_default.yaml", extra_args=extra)
    except ValueError as err:
        raise InputError("the command line and --config", "consistent PPO settings", str(err)) from None
    if cfg.panel_users < 2:
        raise InputError("--panel_users", "at least 2 validation pairs (paired differences need two)",
                         str(cfg.panel_users))
    if not (cfg.projection_basis or cfg.no_projection or cfg.freeze_store):
        cfg = dataclasses.replace(cfg, freeze_store=True)  # no step is taken: the mode changes nothing
    R.check(cfg)
    return cfg, ns.vs


def score(cfg: RecRLConfig) -> R.PanelScores:
    built = R.build(cfg)
    scores = R.panel_scores(built.trainer, built.sim, built.panel, cfg.panel_decoding, cfg.panel_samples,
                            cfg.seed + R.PANEL_SEED_OFFSET)
    del built
    gc.collect()
    return scores


def table(names: list[str], scores: list[R.PanelScores]) -> str:
    head = "| explainer | " + " | ".join(f[0] for f in FIELDS) + " |"
    rows = [head, "|" + "---|" * (len(FIELDS) + 1)]
    for name, s in zip(names, scores):
        rows.append(f"| {name} | " + " | ".join(f"{getattr(s, k).mean().item() * m:.{d}f}"
                                                for _, k, m, d in FIELDS) + " |")
    if len(scores) == 2:
        cells = []
        for _, k, m, d in FIELDS:
            c = paired(getattr(scores[0], k).numpy() * m, getattr(scores[1], k).numpy() * m)
            cells.append(f"{c.diff:+.{d}f} ± {c.se:.{d}f} (p {c.p:.2g})")
        rows.append("| difference, first − second | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> str:
    cfg, vs = parse(argv)
    configs = [cfg] + ([dataclasses.replace(cfg, explainer_ckpt=vs)] if vs else [])
    scores = [score(c) for c in configs]
    decoding = (f"{cfg.panel_samples} sampled texts per pair (temperature {cfg.temperature}, top-p {cfg.top_p})"
                if cfg.panel_decoding == "sample" else "one greedy text per pair")
    out = (f"validation panel: {len(scores[0].q)} seeded validation users (seed {cfg.seed}), each with its top "
           f"slate item; {decoding}; per-pair means, rates in %; difference paired over the same pairs ± SE "
           f"(two-sided paired t-test p)\n" + table([c.explainer_ckpt or "(default)" for c in configs], scores))
    print(out)
    return out


if __name__ == "__main__":
    run_cli(main)
