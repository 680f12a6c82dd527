"""Issue #15's memory paths give today's numbers: the quality scorer's lazy item-text encoding (and its
on-disk cache), the projection basis from Grams summed over user batches, and a tiny run of
``scripts/bench_scale.py`` (the benchmark of every stage at ML-25M / Amazon Books scale)."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shielded_recrl.projection import artifacts
from shielded_recrl.projection.basis import RECIPES, basis_from_grams, block_gram, compute_basis
from shielded_recrl.projection.run_basis import user_state_batches, user_states
from shielded_recrl.ranker.checkpoint import save_ranker
from shielded_recrl.ranker.model import SASRec, SASRecConfig
from shielded_recrl.explainer.prompts import describe_item
from shielded_recrl.trainer.quality import Quality, QualityScorer, TitleIndex, copy_words

REPO = Path(__file__).resolve().parents[1]
TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Fargo", "The Fifth Element", "Bound", "Heat", "Casino",
          "Babe", "Braveheart", "Apollo Thirteen", "Seven", "Clueless", "Sabrina", "Nixon", "Jumanji"]
ITEMS = pd.DataFrame({"item_id": np.arange(1, len(TITLES) + 1), "title": TITLES, "year": "1995",
                      "genres": ["Comedy|Drama", "Action|Thriller", "Thriller", "Crime"] * 4})
ITEMS["text"] = ITEMS["title"] + " (1995). " + ITEMS["genres"].str.replace("|", ", ") + "."
TEXTS = ["Because you enjoyed Heat and Casino, you may like Fargo: it is also a gripping crime film.",
         "Since you liked Babe, you may like Toy Story, a warm comedy for the whole family to enjoy.",
         "You may like GoldenEye",
         "Because you enjoyed Sabrina, you may like Nixon: a sharp drama with a great lead performance."]
ITEM_IDS = [4, 1, 2, 15]
# the first is longer than history_window (10): its oldest item (16, in no other call) is never needed
HISTORIES = [np.array([16, 13, 3, 5, 6, 7, 8, 9, 10, 11, 12]), np.array([9, 3]), np.array([], np.int64),
             np.array([14, 3])]
SHOWN = [[7, 8], [9], [], [14]]


class CountingEncoder:
    """Hashed bag of words → unit vectors, recording every call's texts; ``identity`` as a real encoder's."""

    def __init__(self, identity: str | None = None):
        self.calls: list[list[str]] = []
        if identity is not None:
            self.identity = identity

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").replace(",", " ").split():
                out[i, zlib.crc32(w.encode()) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def item_texts(self) -> list[str]:
        """Catalogue texts it was asked to encode, in order (explanations are not catalogue texts)."""
        catalogue = set(ITEMS["text"])
        return [t for call in self.calls for t in call if t in catalogue]


def _toxicity(texts):
    return np.full(len(texts), 0.01)


def _score(scorer: QualityScorer) -> Quality:
    return scorer.score(TEXTS, ITEM_IDS, HISTORIES, SHOWN)


def _assert_same(a: Quality, b: Quality) -> None:
    for name in Quality._fields:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_lazy_scorer_equals_eager_and_encodes_only_the_needed_items():
    eager_enc, lazy_enc = CountingEncoder(), CountingEncoder()
    eager = QualityScorer(ITEMS, eager_enc, toxicity=_toxicity)
    eager.item_text.ensure()  # the scorer before issue #15: every item text in one call at start-up
    assert eager_enc.calls == [ITEMS["text"].tolist()]
    lazy = QualityScorer(ITEMS, lazy_enc, toxicity=_toxicity)
    assert lazy_enc.calls == []  # nothing encoded at start-up
    got, want = _score(lazy), _score(eager)
    _assert_same(got, want)
    # today's formula, by hand: cosine with the item's row of the whole-catalogue table, calibrated
    table = eager_enc.encode(ITEMS["text"].tolist())
    X = eager_enc.encode(TEXTS)
    c = lazy.cfg
    np.testing.assert_array_equal(got.item, np.clip(((X * table[np.array(ITEM_IDS) - 1]).sum(1) - c.item_base)
                                                    / c.item_scale, -1, 1))
    needed = set(ITEM_IDS) | {int(i) for h in HISTORIES for i in h[-c.history_window:]}
    assert sorted(lazy_enc.item_texts()) == sorted(ITEMS.set_index("item_id").loc[sorted(needed), "text"])
    assert len(needed) < len(ITEMS) and lazy.item_text.n_encoded == len(needed)
    assert len(lazy_enc.calls) == 2  # the explanations, then the missing item texts: one call each
    _assert_same(_score(lazy), want)  # again: every item is known, only the explanations are encoded
    assert len(lazy_enc.calls) == 3 and len(lazy_enc.item_texts()) == len(needed)
    assert np.array_equal(lazy.history_embedding([]), np.zeros(64, np.float32))


def test_item_text_cache_round_trips_and_is_keyed_by_id_map_and_encoder(tmp_path):
    id_map = "a" * 64
    first = QualityScorer(ITEMS, CountingEncoder("bow-64"), toxicity=_toxicity, id_map_sha256=id_map, cache_dir=tmp_path)
    want = _score(first)
    files = sorted(tmp_path.glob("*.sqlite"))
    assert len(files) == 1 and first.item_text.n_encoded > 0

    again_enc = CountingEncoder("bow-64")  # a later run on the same data: every vector read back from disk
    again = QualityScorer(ITEMS, again_enc, toxicity=_toxicity, id_map_sha256=id_map, cache_dir=tmp_path)
    _assert_same(_score(again), want)
    assert again_enc.item_texts() == [] and again.item_text.n_encoded == 0
    known = np.flatnonzero(first.item_text.known)
    assert first.item_text.table[known].tobytes() == again.item_text.table[known].tobytes()

    other_map = QualityScorer(ITEMS, CountingEncoder("bow-64"), toxicity=_toxicity, id_map_sha256="b" * 64,
                              cache_dir=tmp_path)
    other_encoder = QualityScorer(ITEMS, CountingEncoder("bow-32"), toxicity=_toxicity, id_map_sha256=id_map,
                                  cache_dir=tmp_path)
    edited = ITEMS.assign(text=ITEMS["text"].str.replace("1995", "1996"))  # same ids, another text template
    other_text = QualityScorer(edited, CountingEncoder("bow-64"), toxicity=_toxicity, id_map_sha256=id_map,
                               cache_dir=tmp_path)
    for scorer in (other_map, other_encoder, other_text):  # each its own file, encoded anew
        scorer.score(TEXTS, ITEM_IDS, HISTORIES, SHOWN)
        assert scorer.item_text.n_encoded == first.item_text.n_encoded
    assert len(list(tmp_path.glob("*.sqlite"))) == 4
    anonymous = QualityScorer(ITEMS, CountingEncoder(), toxicity=_toxicity, id_map_sha256=id_map, cache_dir=tmp_path)
    assert anonymous.item_text.cache is None  # a fake without an identity shares nothing


def test_copy_words_from_the_title_automaton_equal_the_regex_ones(ml100k_processed):
    """The copy check's title masking runs on the automaton (linear in the text; the regex alternation took
    ~8 ms a text at ML-25M's 59k titles and grows with the catalogue) and gives the regex's tokens."""
    pytest.importorskip("ahocorasick")
    ti = TitleIndex(ml100k_processed.items)
    assert ti.automaton is not None
    texts = ml100k_processed.references["text"].astype(str).tolist()[:800]
    texts += [describe_item(r) for r in ml100k_processed.items.head(400).to_dict("records")]  # prompt lines
    texts += ["Fargo. Fargo is great, bound to please: Babe (1995; Children's, Comedy, Drama)."]
    auto = ti.automaton
    for text in texts:
        fast = copy_words(text, ti)
        ti.automaton = None
        slow = copy_words(text, ti)
        ti.automaton = auto
        assert fast == slow, text


@pytest.fixture(scope="module")
def ranker(ml100k_processed):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=ml100k_processed.n_items, hidden=64, n_layers=2, max_len=50))
    return model.eval().requires_grad_(False)


def _assert_same_basis(got: dict, want: dict) -> None:
    assert got["rank"] == want["rank"] and got["d"] == want["d"] and got["recipe"] == want["recipe"]
    # to 1e-6 of the largest: the user block's last σ is ~0 (LayerNorm outputs sum to 0 across features,
    # so H has rank d − 1), and its float64 rounding (~4e-7) differs between the two summation orders
    S = want["singular_values"]
    torch.testing.assert_close(got["singular_values"], S, rtol=0, atol=1e-6 * float(S[0]))
    signs = torch.sign((got["Q"] * want["Q"]).sum(0))  # eigenvectors are defined up to sign
    torch.testing.assert_close(got["Q"] * signs, want["Q"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("recipe", RECIPES)
def test_batched_basis_equals_the_stacked_one_on_ml100k(ml100k_processed, ranker, recipe):
    seqs = ml100k_processed.sequences("train")
    cpu = torch.device("cpu")
    E = ranker.item_table.detach()[1:]
    want = compute_basis(user_states(ranker, seqs, None, 2048, 0, cpu), E, 0.99, recipe)
    H = block_gram(user_state_batches(ranker, seqs, None, 100, 0, cpu))  # 943 users in 10 batches
    assert H.rows == len(seqs)
    _assert_same_basis(basis_from_grams(H, block_gram(E.split(500)), 0.99, recipe), want)


def test_run_basis_entry_gives_the_stacked_basis_in_the_same_format(ml100k_processed, ranker, tmp_path):
    from shielded_recrl.projection import run_basis

    data = ml100k_processed
    ckpt = save_ranker(tmp_path / "sasrec.pt", ranker, {"id_map_sha256": data.id_map_sha256})
    out = tmp_path / "basis.pt"
    metrics = run_basis.main(["--dataset", "ml100k", "--proj_dir", str(data.folder.parents[2]), "--ranker_ckpt",
                              str(ckpt), "--output", str(out), "--batch_size", "128", "--max_users", "600", "--force"])
    basis = artifacts.load_basis(out, d=64)
    seqs = data.sequences("train")
    want = compute_basis(user_states(ranker, seqs, 600, 2048, 0, torch.device("cpu")),
                         ranker.item_table.detach()[1:], basis["energy"], "both")
    _assert_same_basis(basis, want)
    assert set(basis) == {"format", "Q", "singular_values", "energy", "rank", "d", "recipe", "trust_radius",
                          "ranker_sha256", "ranker_ckpt", "dataset", "n_users", "n_items", "spectrum"}
    assert basis["n_users"] == 600 and basis["n_items"] == data.n_items and metrics["rank"] == basis["rank"]
    man = json.loads(artifacts.manifest_path(out).read_text())
    assert man["config"]["batch_size"] == 128 and man["outputs"]["basis"]["path"].endswith("basis.pt")


def test_bench_scale_smoke(tmp_path):
    out = tmp_path / "scale_{shape}.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_scale.py"), "--shape", "ml25m", "--scale",
                          "0.002", "--phases", "load", "basis", "--work_dir", str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "scale_ml25m.json").read_text())
    assert report["shape"] == "ml25m" and report["scale"] == 0.002 and report["users"] == 325
    assert list(report["phases"]) == ["generate", "load", "basis"]
    for name, phase in report["phases"].items():
        assert "failed" not in phase, (name, phase)
        assert phase["wall_s"] > 0 and 0 < phase["peak_rss_gb"] < 6, (name, phase)
    assert report["phases"]["load"]["users"] == 325 and report["phases"]["load"]["interactions"] > 325 * 5
    assert report["phases"]["basis"]["basis_users"] == 325 and report["phases"]["basis"]["rank"] <= 64
    assert report["phases"]["basis"]["targets"] == {"peak ≤ 6 GB": True}
    assert "basis" in res.stdout and "peak_GB" in res.stdout  # the printed table
