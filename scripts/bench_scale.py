"""Benchmark every stage's memory and time at the target scales (DESIGN.md §7, issue #15) on synthetic data.

    python scripts/bench_scale.py --shape ml25m|books|both [--phases load basis ...] [--scale F]
        [--work_dir DIR] [--out experiments/bench/scale_{shape}.json] [--phase_users PHASE=N ...]

A benchmark, not a test. For each shape it writes, once, synthetic data in the real processed format
(``<work_dir>/<shape>_<scale>/data/proc/<D>/``, what ``dataset/processed.py`` reads: interactions,
items, users and template references, ``stats.json`` and a manifest with file hashes) and a random-init
SASRec checkpoint (hidden 64, 2 layers, max_len 50) beside it, then runs each phase in its own child
process with ``RECRL_ROOT`` pointing there and prints the phase's wall time and the child's peak RSS
(``ru_maxrss`` from ``os.wait4``: everything numpy/torch/pyarrow allocate, not only Python objects; as in
``scripts/bench_preprocess.py``). Every phase loads the processed data itself, so its peak includes it.

Shapes (``--scale F`` shrinks users, items and interactions by F, for quick runs):

    ml25m   162,541 users,    59,047 items, 25.0M interactions (ML-25M-like: long histories)
    books   1,850,000 users, 712,000 items, 27.0M interactions (Amazon Books 5-core-like: short ones)

Phases (``--phases``; default all that apply):

    generate      writing the synthetic data (bounded: users in chunks, int32 columns, pyarrow writers)
    load          ``load_processed`` (manifest hashes checked) + ``sequences("train")``
    basis         the projection stage's entry, ``code/projection/run_basis.py`` (batched Gram), all users
    simulator     ``UserSimulator.from_ranker`` over every user, then the slate state of 1,000 random users
                  (computed when first asked for, as a PPO step does for the users it samples; ``--phase_users
                  simulator=N``: N users), the same slates again (kept) and 1,000 off-slate z queries
    drift         ``reference_scores`` + one ``drift_report`` (valid split, a seeded 10k-user sample, as the
                  PPO monitor does)
    evaluate      ``ranker.evaluate.evaluate(..., users=)`` of a seeded 10k-user sample, all protocols
    evaluate_all  the same over every user (ml25m only by default)
    titles        ``QualityScorer`` start-up (its ``TitleIndex`` over every title; item texts are encoded
                  lazily, so no encoder pass) and title matching per text (``named_spans`` + ``find``),
                  plus ``score`` per text with a hashing fake encoder and no toxicity model
    ranker_step   ``scripts/bench_ranker.py --items N --losses ...`` (one training step per loss, each in
                  its own child; not duplicated here)

``--phase_users PHASE=N ...``: a phase whose work is linear in its number of users (basis, simulator,
drift, evaluate, evaluate_all) does it for N of them only and extrapolates its time linearly to the
users it stands for (marked ``extrapolated`` in the table and the JSON). The data are still loaded in
full and every phase works in user batches, so the memory is measured at scale; the per-user state the
subset left out is estimated and added. ``--sim_batch_users``: the simulator's users per scoring batch
(``UserSimulator``'s default 1024, what the trainer uses). ``--max_rss_gb``: a child whose resident
memory passes this is killed (so a benchmark cannot starve the machine) and reported as such.
``cpu_s`` (the child's user + system CPU time) is printed beside ``wall_s``: on a shared machine the
wall time also counts the time other jobs held the cores.

Targets (issue #15) printed next to each figure: ml25m every phase ≤ 6 GB peak and a drift check ≤ 60 s;
books every phase except full evaluation ≤ 12 GB and title matching ≤ 5 ms per text. Writes
``experiments/bench/scale_<shape>.json`` (``--out``, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shielded_recrl.common.paths import repo_root, resolve_user_path

GENERATOR = "bench_scale/1"  # bump when the synthetic data change: a work dir of another version is rebuilt
PHASES = ("generate", "load", "basis", "simulator", "drift", "evaluate", "evaluate_all", "titles", "ranker_step")
SAMPLE_USERS = 10_000  # the drift check's and the evaluation's seeded user sample
N_QUERIES = 1_000
N_TEXTS = 1_000


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    dataset: str  # the processed folder's name: the stages' per-dataset config applies
    users: int
    items: int
    interactions: int
    kind: str  # "film" | "book": the references' wording
    mem_target_gb: float
    ce_chunk_items: int  # experiments/sasrec.yaml's per-dataset value
    default_phases: tuple[str, ...]


SHAPES = {
    "ml25m": Shape("ml25m", "ml25m", 162_541, 59_047, 25_000_095, "film", 6.0, 8192, PHASES),
    "books": Shape("books", "books", 1_850_000, 712_000, 27_000_000, "book", 12.0, 16384,
                   tuple(p for p in PHASES if p != "evaluate_all")),
}
GENRES = np.array(["Action", "Adventure", "Comedy", "Drama", "Fantasy", "Horror", "Mystery", "Romance",
                   "Sci-Fi", "Thriller", "History", "Children", "Crime", "Documentary", "Western", "Poetry"])


def scaled(shape: Shape, scale: float) -> dict:
    users = max(50, round(shape.users * scale))
    items = max(300, round(shape.items * scale))  # ≥ 150 unseen items per user: the sampled-100 protocol
    return {"users": users, "items": items, "interactions": max(users * 5, round(shape.interactions * scale))}


# --- synthetic data -------------------------------------------------------------------------------
def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct capitalised pseudo-words of 2–3 syllables."""
    cons, vow = list("bcdfghjklmnprstvz"), list("aeiou")
    syl = np.array([c + v for c in cons for v in vow])
    out: set[str] = set()
    while len(out) < n:
        k = rng.integers(2, 4, n)
        idx = rng.integers(0, len(syl), (n, 3))
        out.update("".join(syl[idx[i, :k[i]]]).capitalize() for i in range(n))
    return np.array(sorted(out)[:n])


def synth_items(rng: np.random.Generator, n_items: int, kind: str):
    """The item table (``item_id`` 1..N, ``item_raw``, title, year, genres[, author], text), as preprocessing
    writes it: titles of 1–4 pseudo-words (some with "of the"), ``text`` from ``preprocess.item_text``."""
    import pandas as pd

    from shielded_recrl.dataset.preprocess import item_text

    vocab = _words(rng, 6000)
    zipf = 1.0 / np.arange(1, len(vocab) + 1) ** 0.7
    word = rng.choice(len(vocab), size=(n_items, 4), p=zipf / zipf.sum())
    n_words = rng.choice([1, 2, 3, 4], size=n_items, p=[0.08, 0.40, 0.35, 0.17])
    joiner = rng.random(n_items) < 0.15
    titles = []
    for i in range(n_items):
        w = vocab[word[i, :n_words[i]]]
        titles.append(f"The {w[0]} of the {' '.join(w[1:])}" if joiner[i] and n_words[i] >= 2 else " ".join(w))
    g1, g2 = rng.integers(0, len(GENRES), n_items), rng.integers(0, len(GENRES), n_items)
    genres = np.where(g1 == g2, GENRES[g1], np.char.add(np.char.add(GENRES[g1], "|"), GENRES[g2]))
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1, dtype=np.int32),
                          "item_raw": (np.arange(1, n_items + 1) if kind == "film"
                                       else np.char.add("B", np.char.zfill(np.arange(n_items).astype(str), 9))),
                          "title": titles, "year": (1950 + rng.integers(0, 70, n_items)).astype(str),
                          "genres": genres})
    if kind == "book":
        items["author"] = [" ".join(vocab[rng.integers(0, len(vocab), 2)]) for _ in range(n_items)]
    items["text"] = item_text(items)
    return items


def _user_items(rng, counts: np.ndarray, cdf: np.ndarray, perm: np.ndarray, n_items: int):
    """Per user (local rows 0..C-1) ``counts[u]`` distinct items, popularity Zipf-like, in draw order;
    (user rows, items), grouped by user. Heavy users whose Zipf draws repeat are topped up uniformly."""
    C = len(counts)
    u = np.repeat(np.arange(C, dtype=np.int64), np.ceil(counts * 1.3).astype(np.int64) + 2)
    it = perm[np.searchsorted(cdf, rng.random(len(u)), side="right").clip(max=n_items - 1)]
    for _ in range(6):
        _, first = np.unique(u * (n_items + 1) + it, return_index=True)
        first.sort()  # first draws of each distinct (user, item), in draw order (u stays grouped)
        u, it = u[first], it[first]
        have = np.bincount(u, minlength=C)
        short = np.clip(counts - have, 0, None)
        if not short.any():
            break
        extra = np.repeat(np.arange(C, dtype=np.int64), 2 * short)
        u = np.concatenate([u, extra])
        it = np.concatenate([it, rng.integers(1, n_items + 1, len(extra))])
        order = np.argsort(u, kind="stable")
        u, it = u[order], it[order]
    have = np.bincount(u, minlength=C)
    start = np.concatenate([[0], np.cumsum(have)[:-1]])
    keep = (np.arange(len(u)) - start[u]) < counts[u]
    return u[keep], it[keep]


def write_dataset(root: Path, shape: Shape, scale: float, seed: int) -> dict:
    """``root/data/proc/<D>/`` in the processed format, users in chunks (memory O(chunk), not O(I));
    reused when its manifest says it was made with the same shape, scale, seed and generator."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from shielded_recrl.common import atomic, manifest

    dims = scaled(shape, scale)
    config = {"synthetic": shape.name, "scale": scale, "seed": seed, "generator": GENERATOR, **dims}
    dest = root / "data" / "proc" / shape.dataset
    if (dest / "manifest.json").exists() and json.loads((dest / "manifest.json").read_text()).get("config") == config:
        return {"reused": True, **json.loads((dest / "stats.json").read_text())}
    started = time.time()
    rng = np.random.default_rng(seed)
    U, N = dims["users"], dims["items"]
    items = synth_items(rng, N, shape.kind)
    titles = pa.array(items["title"].tolist())
    years = pa.array(items["year"].tolist())
    first_genre = pa.array([g.split("|")[0].lower() for g in items["genres"]])
    # per-user lengths: ≥ 5 (5-core), log-normal, mean interactions / users; at most half the catalogue
    raw = rng.lognormal(0.0, 1.2, U)
    counts = np.clip(np.rint(5 + raw / raw.mean() * (dims["interactions"] / U - 5)), 5, max(5, N // 2)).astype(np.int64)
    pop = 1.0 / np.arange(1, N + 1) ** 0.8
    cdf = np.cumsum(pop) / pop.sum()
    perm = (rng.permutation(N) + 1).astype(np.int64)  # popularity rank → item id
    chunk = max(1, int(3_000_000 / max(1.0, counts.mean())))  # ~3M interactions per chunk
    split_names = pa.array(["train", "valid", "test"])
    n_inter = n_refs = 0
    with atomic.atomic_dir(dest) as tmp:
        inter_w = ref_w = None
        for lo in range(0, U, chunk):
            c = counts[lo:lo + chunk]
            u, it = _user_items(rng, c, cdf, perm, N)
            n_u = np.bincount(u, minlength=len(c))
            start = np.concatenate([[0], np.cumsum(n_u)[:-1]])
            pos = np.arange(len(u)) - start[u]
            gaps = rng.integers(60, 30 * 86400, len(u))
            cs = np.cumsum(gaps)
            ts = rng.integers(1_000_000_000, 1_400_000_000, len(c))[u] + cs - (cs[start] - gaps[start])[u]
            code = ((pos == n_u[u] - 2).astype(np.int8) + 2 * (pos == n_u[u] - 1).astype(np.int8))
            split = pa.DictionaryArray.from_arrays(pa.array(code), split_names).cast(pa.string())
            table = pa.table({"user_id": pa.array((u + lo + 1).astype(np.int32)), "item_id": pa.array(it.astype(np.int32)),
                              "ts": pa.array(ts.astype(np.int64)), "pos": pa.array(pos.astype(np.int32)),
                              "split": split, "rating": pa.array(rng.choice([4.0, 4.5, 5.0], len(u)))})
            inter_w = inter_w or pq.ParquetWriter(tmp / "interactions.parquet", table.schema)
            inter_w.write_table(table)
            n_inter += len(u)
            # references: valid, test and the last 5 train items of each user (build_references' rows)
            sel = np.flatnonzero(pos >= n_u[u] - 7)
            prev = np.where(pos[sel] > 0, it[np.maximum(sel - 1, 0)], it[np.minimum(sel + 1, len(it) - 1)])
            idx = pa.array(it[sel] - 1)
            text = pc.binary_join_element_wise(
                "Because you enjoyed ", titles.take(pa.array(prev - 1)), ", you may like ", titles.take(idx), " (",
                years.take(idx), "): it is also a ", first_genre.take(idx), f" {shape.kind}.", "")
            refs = pa.table({"user_id": pa.array(u[sel] + lo + 1), "item_id": pa.array(it[sel]),
                             "pos": pa.array(pos[sel]), "split": split.take(pa.array(sel)), "text": text,
                             "source": pa.array(["template"] * len(sel))})
            ref_w = ref_w or pq.ParquetWriter(tmp / "references.parquet", refs.schema)
            ref_w.write_table(refs)
            n_refs += len(sel)
        inter_w.close()
        ref_w.close()
        items.to_parquet(tmp / "items.parquet", index=False)
        raw_ids = np.arange(1, U + 1) if shape.kind == "film" else np.char.add("A", np.arange(U).astype(str))
        pd.DataFrame({"user_id": np.arange(1, U + 1, dtype=np.int32), "user_raw": raw_ids}).to_parquet(
            tmp / "users.parquet", index=False)
        id_map = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        stats = {"dataset": shape.dataset, "users": U, "items": N, "interactions": n_inter,
                 "density": n_inter / (U * N), "avg_seq_len": n_inter / U, "k_core": 5, "min_rating": None,
                 "references": {"template": n_refs}, "id_map_sha256": id_map, "synthetic": config,
                 "split": "leave-one-out: last = test, second-last = valid, rest = train"}
        atomic.write_json(tmp / "stats.json", stats)
        m = manifest.build("dataset", config=config, seed=seed, started=started,
                           metrics={k: stats[k] for k in ("users", "items", "interactions")},
                           extra={"id_map_sha256": id_map,
                                  "files": {p.name: manifest.sha256_file(p) for p in sorted(tmp.iterdir())}})
        manifest.write(tmp, m)
    return {"reused": False, **stats}


def write_ranker(root: Path, shape: Shape, id_map: str) -> Path:
    """A random-init SASRec over the catalogue (hidden 64, 2 layers, max_len 50), as ``checkpoints/sasrec_<D>.pt``."""
    import torch

    from shielded_recrl.ranker.checkpoint import save_ranker
    from shielded_recrl.ranker.model import SASRec, SASRecConfig

    path = root / "checkpoints" / f"sasrec_{shape.dataset}.pt"
    if path.exists() and torch.load(path, weights_only=True).get("id_map_sha256") == id_map:
        return path
    n_items = json.loads((root / "data" / "proc" / shape.dataset / "stats.json").read_text())["items"]
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=n_items, hidden=64, n_layers=2, max_len=50))
    return save_ranker(path, model, {"id_map_sha256": id_map, "dataset": shape.dataset, "note": "random init"})


# --- phases (each runs in a child process) ---------------------------------------------------------
def _load(dataset: str):
    from shielded_recrl.dataset.processed import load_processed
    from shielded_recrl.ranker.checkpoint import load_ranker
    from shielded_recrl.common.paths import checkpoints_dir

    t = time.time()
    data = load_processed(dataset)
    model, _ = load_ranker(checkpoints_dir() / f"sasrec_{dataset}.pt", expect_id_map=data.id_map_sha256)
    model.requires_grad_(False)
    return data, model, time.time() - t


def _peak_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def phase_load(args) -> dict:
    from shielded_recrl.dataset.processed import load_processed

    t = time.time()
    data = load_processed(args.dataset)
    t_load, peak_load = time.time() - t, _peak_gb()
    t = time.time()
    seqs = data.sequences("train")
    return {"load_processed_s": round(t_load, 2), "peak_after_load_processed_gb": peak_load,
            "sequences_s": round(time.time() - t, 2),
            "users": data.n_users, "items": data.n_items, "interactions": len(data.interactions),
            "references": len(data.references), "train_items": int(sum(len(s) for s in seqs))}


def _users_for(args, phase: str, nominal: int) -> int:
    """How many of a phase's ``nominal`` users it works on (``--phase_users``)."""
    return min(nominal, args.phase_users.get(phase, nominal))


def _extrapolate(out: dict, n: int, nominal: int, linear_s: float, fixed_s: float, how: str,
                 extra_bytes_per_user: float = 0.0) -> dict:
    """``out`` with ``work_s``: the phase's time for its ``nominal`` users, from ``n`` (``linear_s`` scales with
    users, ``fixed_s`` does not), and, when ``n < nominal``, what was extrapolated and how."""
    out["work_s"] = round(linear_s * nominal / n + fixed_s, 1)
    if n < nominal:
        out["extrapolated"] = {"from_users": n, "to_users": nominal, "how": how,
                               "extra_state_gb": round((nominal - n) * extra_bytes_per_user / 2**30, 3)}
    return out


def phase_basis(args) -> dict:
    from shielded_recrl.common.paths import checkpoints_dir, repo_root
    from shielded_recrl.projection import run_basis

    n_all = json.loads((repo_root() / "data" / "proc" / args.dataset / "stats.json").read_text())["users"]
    n = _users_for(args, "basis", n_all)
    argv = ["--dataset", args.dataset, "--max_users", str(n), "--device", "cpu", "--force",
            "--output", str(checkpoints_dir() / f"basis_{args.dataset}.pt")]
    t = time.time()
    metrics = run_basis.main(argv)  # the stage's entry: states in batches of 2048, summed into a d x d Gram
    out = {"entry": "run_basis.py " + " ".join(argv), "basis_users": n, "rank": metrics["rank"],
           "states_and_gram_s": metrics["seconds_states"], "eigh_s": metrics["seconds_svd"],
           "entry_s": round(time.time() - t, 2)}
    return _extrapolate(out, n, n_all, metrics["seconds_states"], metrics["seconds_svd"],
                        "states-and-Gram time x users / basis_users (the Gram is d x d whatever the users)")


def phase_simulator(args) -> dict:
    import torch

    from shielded_recrl.trainer.simulator import SimulatorConfig, UserSimulator

    data, model, t_load = _load(args.dataset)
    hist = data.sequences("train")
    n = min(args.phase_users.get("simulator", N_QUERIES), len(hist))
    cfg = SimulatorConfig()
    t = time.time()
    sim = UserSimulator.from_ranker(model, hist, None, cfg, batch_users=args.sim_batch_users)
    t_build = time.time() - t
    g = torch.Generator().manual_seed(0)
    users = torch.randperm(len(hist), generator=g)[:n] + 1
    t = time.time()
    sim.slate(users)  # computes these users' state
    t_state = time.time() - t
    t = time.time()
    sim.slate(users)  # kept
    t_again = time.time() - t
    items = torch.randint(1, data.n_items + 1, (len(users),), generator=g)
    t = time.time()
    sim.z_of(users, items)
    t_z = time.time() - t
    out = {"load_s": round(t_load, 1), "build_s": round(t_build, 2), "sim_users": len(hist), "state_users": n,
           "batch_users": args.sim_batch_users, "state_s": round(t_state, 2),
           "state_ms_per_user": round(1000 * t_state / n, 2), "slate_again_s": round(t_again, 4),
           "z_s": round(t_z, 4)}
    # work_s: the state of every user, were all asked for (no stage does: PPO and evaluation ask for the
    # users they sample); the state arrays are allocated for all users at construction, so nothing to add
    return _extrapolate(out, n, len(hist), t_state, t_build + t_again + t_z,
                        "state time x users / state_users (a user's state is computed when first asked for)")


def phase_drift(args) -> dict:
    import torch

    from shielded_recrl.eval.ranking_drift import drift_report, reference_scores
    from shielded_recrl.ranker.evaluate import rows_per_batch, sample_users

    data, model, t_load = _load(args.dataset)
    nominal = min(SAMPLE_USERS, data.n_users)
    n = _users_for(args, "drift", nominal)
    batch = rows_per_batch(1024, data.n_items + 1)
    users = sample_users(data.n_users, n, 0)
    t = time.time()
    ref = reference_scores(model, data, "valid", users=users)  # the PPO monitor's split and sample
    t_ref = time.time() - t
    g = torch.Generator().manual_seed(1)
    E1 = model.item_table.detach() + 0.01 * torch.randn(model.item_table.shape, generator=g)
    t = time.time()
    rep = drift_report(model, data, "valid", E1, reference=ref)
    t_check = time.time() - t
    out = {"load_s": round(t_load, 1), "reference_s": round(t_ref * nominal / n, 1),
           "check_s": round(t_check * nominal / n, 1), "users": nominal, "measured_users": len(rep.overlap),
           "top10_overlap": round(float(rep.overlap.mean()), 4)}
    return _extrapolate(out, n, nominal, t_ref + t_check, 0.0,
                        f"reference and check times x users / measured_users (batches of {batch} users)",
                        extra_bytes_per_user=10 * 8 * 2 + 5 * 8)


def phase_evaluate(args, all_users: bool = False) -> dict:
    from shielded_recrl.ranker.evaluate import evaluate, rows_per_batch, sample_users

    phase = "evaluate_all" if all_users else "evaluate"
    data, model, t_load = _load(args.dataset)
    batch = rows_per_batch(1024, data.n_items + 1)
    nominal = data.n_users if all_users else min(SAMPLE_USERS, data.n_users)
    n = _users_for(args, phase, nominal)
    users = sample_users(data.n_users, n, 0)
    t = time.time()
    res = evaluate(model, data, "test", users=users)
    t_eval = time.time() - t
    out = {"load_s": round(t_load, 1), "evaluate_s": round(t_eval * nominal / n, 1), "users": nominal,
           "measured_users": res["n_users"], "protocols": list(res["metrics"]),
           "ndcg@10": round(res["metrics"]["full_masked"]["ndcg@10"], 5)}
    return _extrapolate(out, n, nominal, t_eval, 0.0,
                        f"evaluation time x users / measured_users (batches of {batch} users; per-user results "
                        "~100 B a user)", extra_bytes_per_user=100)


class HashEncoder:
    """A fake sentence encoder: unit-norm hashed bags of words (384-d); cheap, deterministic."""

    def encode(self, texts):
        out = np.zeros((len(texts), 384), np.float32)
        for r, t in enumerate(texts):
            for w in t.lower().split():
                out[r, int(hashlib.md5(w.encode()).hexdigest()[:6], 16) % 384] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def phase_titles(args) -> dict:
    from shielded_recrl.dataset.processed import load_processed
    from shielded_recrl.explainer.prompts import shown_history
    from shielded_recrl.trainer.quality import QualityScorer

    t = time.time()
    data = load_processed(args.dataset)
    t_load = time.time() - t
    t = time.time()
    scorer = QualityScorer(data.items, HashEncoder(), toxicity=lambda texts: np.zeros(len(texts)))
    t_init = time.time() - t
    rng = np.random.default_rng(0)
    titles = data.items["title"].to_numpy()
    hist = data.sequences("train")
    users = rng.integers(0, data.n_users, N_TEXTS)
    texts, items, hists, shown = [], [], [], []
    for k, u in enumerate(users):
        h = hist[u]
        a, b = titles[h[-1] - 1], titles[h[0] - 1]
        item = int(rng.integers(1, data.n_items + 1))
        texts.append(f"Because you enjoyed {a} and {b}, you may like {titles[item - 1]}: a gripping story "
                     f"that Maria Kovacs praised, with the same warmth and a sharper plot{'!' if k % 3 else '.'}")
        items.append(item)
        hists.append(h)
        shown.append(shown_history(h, min(5, len(h))))
    t = time.time()
    n_named = 0
    for text in texts:  # what the scorer does per text to find titles
        found = scorer.titles.named_spans(text)
        scorer.titles.find(text, found)
        n_named += len(found)
    t_match = time.time() - t
    t = time.time()
    for i in range(0, 256, 32):
        scorer.score(texts[i:i + 32], items[i:i + 32], hists[i:i + 32], shown[i:i + 32])
    t_score = time.time() - t
    return {"load_s": round(t_load, 1), "scorer_init_s": round(t_init, 1),
            "automaton": scorer.titles.automaton is not None,
            "match_ms_per_text": round(1000 * t_match / len(texts), 3), "titles_named_per_text": n_named / len(texts),
            "score_ms_per_text": round(1000 * t_score / 256, 2),
            "item_texts_encoded": scorer.item_text.n_encoded, "of_items": data.n_items,
            "work_s": round(t_init + t_match + t_score, 1)}


PHASE_FNS = {"load": phase_load, "basis": phase_basis, "simulator": phase_simulator, "drift": phase_drift,
             "evaluate": phase_evaluate, "evaluate_all": lambda a: phase_evaluate(a, all_users=True),
             "titles": phase_titles}


def child_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    out = PHASE_FNS[args.child](args)
    print("BENCH_RESULT " + json.dumps(out), flush=True)


# --- the parent: one child per phase, wall time and peak RSS ---------------------------------------
def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20
    except (OSError, StopIteration):
        return 0.0


def run_child(cmd: list[str], env: dict, log: Path, max_rss_gb: float, timeout_s: float) -> dict:
    """Run ``cmd``; its wall time and peak RSS (``ru_maxrss`` of it and the children it waited for), killed
    past ``max_rss_gb`` resident or ``timeout_s``. Its output goes to ``log``; its last BENCH_RESULT line,
    if any, is parsed."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        killed = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if _rss_gb(proc.pid) > max_rss_gb:
                killed = f"killed by the benchmark: resident memory passed --max_rss_gb {max_rss_gb}"
                proc.kill()
            elif time.time() - t0 > timeout_s:
                killed = f"killed by the benchmark after --phase_timeout_s {timeout_s}"
                proc.kill()
            time.sleep(0.25)
    res = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}  # ru_maxrss: KiB on Linux
    code = os.waitstatus_to_exitcode(status)
    lines = log.read_text().splitlines()
    found = [ln for ln in lines if ln.startswith("BENCH_RESULT ")]
    if found:
        res.update(json.loads(found[-1][len("BENCH_RESULT "):]))
    if code != 0 or killed:
        res["failed"] = killed or (f"killed by signal {-code} (the kernel's OOM killer sends 9)" if code < 0
                                   else f"exit {code}: {lines[-1] if lines else ''}")
    return res


def ranker_step(args, shape: Shape, n_items: int, root: Path, log: Path, env: dict) -> dict:
    """``scripts/bench_ranker.py --items N`` (its own child per loss); its JSON, summarised."""
    cmd = [sys.executable, str(repo_root() / "scripts" / "bench_ranker.py"), "--items", str(n_items),
           "--losses", *args.ranker_losses, "--threads", str(args.threads), "--ce_chunk_items", str(shape.ce_chunk_items),
           "--steps", "1"]
    res = run_child(cmd, env, log, args.max_rss_gb, args.phase_timeout_s)
    out_file = root / "experiments" / "bench" / f"ranker_losses_{n_items}.json"  # RECRL_ROOT's experiments/
    if "failed" not in res and out_file.exists():
        losses = json.loads(out_file.read_text())["losses"]
        res["losses"] = {k: {f: v[f] for f in ("step_s_median", "peak_rss_mib", "skipped", "failed", "epoch_h")
                             if f in v} for k, v in losses.items()}
        ran = [v for v in losses.values() if "peak_rss_mib" in v]
        if ran:  # each loss ran in its own grandchild: report the worst
            res["peak_rss_gb"] = round(max(v["peak_rss_mib"] for v in ran) / 1024, 2)
        res["entry"] = " ".join(cmd[1:])
    return res


def targets(shape: Shape, phase: str, res: dict) -> list[tuple[str, bool]]:
    """(what, met) for each issue #15 target that applies to this phase's result."""
    out = []
    if "peak_rss_gb" in res and not (shape.name == "books" and phase == "evaluate_all"):
        peak = res["peak_rss_gb"] + res.get("extrapolated", {}).get("extra_state_gb", 0.0)
        out.append((f"peak ≤ {shape.mem_target_gb:g} GB", peak <= shape.mem_target_gb))
    if shape.name == "ml25m" and phase == "drift" and "check_s" in res:
        out.append(("drift check ≤ 60 s", res["check_s"] <= 60))
    if shape.name == "books" and phase == "titles" and "match_ms_per_text" in res:
        out.append(("title matching ≤ 5 ms/text", res["match_ms_per_text"] <= 5))
    return out


def detail(phase: str, res: dict) -> str:
    keys = {"generate": ("interactions", "references_rows"),
            "load": ("load_processed_s", "peak_after_load_processed_gb", "sequences_s"),
            "basis": ("basis_users", "states_and_gram_s", "eigh_s"),
            "simulator": ("sim_users", "state_users", "build_s", "state_ms_per_user", "slate_again_s", "z_s"),
            "drift": ("users", "reference_s", "check_s"), "evaluate": ("users", "evaluate_s"),
            "evaluate_all": ("users", "evaluate_s"),
            "titles": ("scorer_init_s", "match_ms_per_text", "score_ms_per_text", "item_texts_encoded"),
            "ranker_step": ()}[phase]
    parts = [f"{k}={res[k]}" for k in keys if k in res]
    if phase == "ranker_step":
        parts += [f"{k}: " + (v.get("skipped") and "skipped" or v.get("failed") and "failed"
                              or f"{v.get('step_s_median')} s/step {v.get('peak_rss_mib')} MiB")
                  for k, v in res.get("losses", {}).items()]
    if "extrapolated" in res:
        parts.append(f"EXTRAPOLATED from {res['extrapolated']['from_users']:,} users (work_s={res.get('work_s')})")
    if "failed" in res:
        parts.append(f"FAILED: {res['failed']}")
    return ", ".join(parts)


def print_table(shape: Shape, dims: dict, results: dict) -> None:
    print(f"\n{shape.name}-like: {dims['users']:,} users, {dims['items']:,} items, {dims['interactions']:,} "
          f"interactions (scale {dims['scale']}); {dims['cores']} cores, threads {dims['threads']}; "
          f"load average at start {dims['loadavg']}")
    print(f"{'phase':<13} {'wall_s':>8} {'cpu_s':>8} {'peak_GB':>8}  {'targets':<36} details")
    for phase, res in results.items():
        t = ", ".join(f"{what}: {'ok' if met else 'MISSED'}" for what, met in targets(shape, phase, res))
        print(f"{phase:<13} {res.get('wall_s', ''):>8} {res.get('cpu_s', ''):>8} {res.get('peak_rss_gb', ''):>8}  "
              f"{t:<36} {detail(phase, res)}")


def bench_shape(args, shape: Shape) -> dict:
    from shielded_recrl.common import atomic

    base = Path(args.work_dir) if args.work_dir else Path(tempfile.gettempdir()) / "recrl-bench-scale"
    root = (base / f"{shape.name}_{args.scale:g}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RECRL_ROOT=str(root), OMP_NUM_THREADS=str(args.threads))
    phases = [p for p in (args.phases or shape.default_phases) if p != "generate"]
    dims = {**scaled(shape, args.scale), "scale": args.scale, "cores": len(os.sched_getaffinity(0)),
            "threads": args.threads, "loadavg": " ".join(open("/proc/loadavg").read().split()[:3])}
    results: dict[str, dict] = {}
    gen = run_child([sys.executable, __file__, "--generate", shape.name, "--scale", str(args.scale),
                     "--seed", str(args.seed), "--root", str(root)], env, root / "generate.log",
                    args.max_rss_gb, args.phase_timeout_s)
    results["generate"] = gen
    print(f"[bench] {shape.name} generate: {gen}", flush=True)
    if "failed" in gen:
        raise SystemExit(f"generating the synthetic data failed: {gen['failed']} (see {root / 'generate.log'})")
    dims.update({k: gen[k] for k in ("users", "items", "interactions") if k in gen})
    for phase in phases:
        log = root / f"{phase}.log"
        if phase == "ranker_step":
            res = ranker_step(args, shape, gen["items"], root, log, env)
        else:
            cmd = [sys.executable, __file__, "--child", phase, "--dataset", shape.dataset, "--threads",
                   str(args.threads), "--sim_batch_users", str(args.sim_batch_users),
                   "--phase_users", *[f"{k}={v}" for k, v in args.phase_users.items()]]
            res = run_child(cmd, env, log, args.max_rss_gb, args.phase_timeout_s)
        res["targets"] = {what: met for what, met in targets(shape, phase, res)}
        results[phase] = res
        print(f"[bench] {shape.name} {phase}: {detail(phase, res)} (wall {res['wall_s']} s, peak "
              f"{res['peak_rss_gb']} GB; log {log})", flush=True)
    out = {"shape": shape.name, **dims, "work_dir": str(root), "phases": results,
           "note": "random-init SASRec (hidden 64, 2 layers, max_len 50) on synthetic data in the processed "
                   "format; wall_s is the child's whole run (interpreter start and data load included); "
                   "peak_rss_gb is its ru_maxrss", "command": " ".join(sys.argv)}
    print_table(shape, dims, results)
    path = resolve_user_path(args.out.format(shape=shape.name))
    atomic.write_json(path, out)
    print(f"[bench] wrote {path}")
    return out


def generate_main(args) -> None:
    """Child: the synthetic data and the random ranker (the ``generate`` phase)."""
    shape = SHAPES[args.generate]
    root = Path(args.root)
    stats = write_dataset(root, shape, args.scale, args.seed)
    write_ranker(root, shape, stats["id_map_sha256"])
    print("BENCH_RESULT " + json.dumps({"reused": stats["reused"], "users": stats["users"], "items": stats["items"],
                                        "interactions": stats["interactions"],
                                        "references_rows": stats["references"]["template"]}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("ml25m", "books", "both"), default="both")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=None,
                   help="default: every phase of the shape (evaluate_all: ml25m only)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink users, items and interactions by this factor")
    p.add_argument("--work_dir", default=None, help="where the synthetic roots live, reused across runs "
                   "(default: <tmp>/recrl-bench-scale)")
    p.add_argument("--out", default="experiments/bench/scale_{shape}.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase_users", nargs="*", default=[], metavar="PHASE=N",
                   help="basis, simulator, drift, evaluate, evaluate_all: work on N of the phase's users and "
                        "extrapolate its time (simulator: the users whose state is computed, default 1,000), "
                        "e.g. simulator=10000 evaluate_all=20000")
    p.add_argument("--sim_batch_users", type=int, default=1024, help="the simulator's users per scoring batch")
    p.add_argument("--ranker_losses", nargs="+", default=["ce_chunked", "sampled_softmax", "gbce"],
                   help="losses for bench_ranker.py (full 'ce' needs 3 x positions x items x 4 B)")
    p.add_argument("--max_rss_gb", type=float, default=16.0, help="kill a phase whose resident memory passes this")
    p.add_argument("--phase_timeout_s", type=float, default=3600.0)
    p.add_argument("--child", choices=tuple(PHASE_FNS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--generate", choices=tuple(SHAPES), default=None, help=argparse.SUPPRESS)
    p.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.phase_users = {k: int(v) for k, v in (item.split("=") for item in args.phase_users)}
    except ValueError:
        p.error(f"--phase_users takes PHASE=N pairs; found {args.phase_users}")
    if set(args.phase_users) - {"basis", "simulator", "drift", "evaluate", "evaluate_all"}:
        p.error(f"--phase_users: only basis, simulator, drift, evaluate, evaluate_all; found {sorted(args.phase_users)}")
    if args.child:
        return child_main(args)
    if args.generate:
        return generate_main(args)
    shapes = ["ml25m", "books"] if args.shape == "both" else [args.shape]
    if len(shapes) > 1 and "{shape}" not in args.out:
        p.error("--out must contain {shape} when --shape both")
    return [bench_shape(args, SHAPES[s]) for s in shapes]


if __name__ == "__main__":
    main()
