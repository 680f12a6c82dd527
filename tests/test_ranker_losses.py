"""The ranker's catalogue-scale losses (code/ranker/losses.py, issue #15): chunked CE is full CE, the
logQ-corrected sampled softmax reduces to it exactly, accidental hits are masked, gBCE is the paper's,
bad settings are refused, the choice is recorded, and sampled softmax trains on ML-100K.

Real-data tests use the session fixture ``ml100k_processed`` (tests/conftest.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_ranker_training import _subset, _threads  # noqa: F401  (_threads: autouse, one torch thread)

from shielded_recrl.common import paths
from shielded_recrl.common.configs import merge_yaml
from shielded_recrl.common.errors import InputError
from shielded_recrl.ranker import baselines
from shielded_recrl.ranker import losses as L
from shielded_recrl.ranker.checkpoint import load_ranker
from shielded_recrl.ranker.data import eval_inputs
from shielded_recrl.ranker.evaluate import evaluate_scorer
from shielded_recrl.ranker.model import SASRec, SASRecConfig
from shielded_recrl.ranker.training import (SASRecTrainConfig, loss_record, sequence_loss, train_model,
                                            unused_settings)

N_ITEMS = 37


def _tiny():
    """A dropout-free SASRec over 37 items and a batch of windows with some padding (target 0)."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, hidden=8, n_heads=2, max_len=6, dropout=0.0))
    x = torch.randint(0, N_ITEMS + 1, (5, 6))
    y = torch.randint(1, N_ITEMS + 1, (5, 6))
    x[0, :3], y[0, :3] = 0, 0
    return model, x, y


def _loss_and_grads(model, x, y, loss, negatives=None, **kw):
    model.zero_grad(set_to_none=True)
    value = sequence_loss(model, x, y, loss, negatives, **kw)
    value.backward()
    return value.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, atol=1e-5):
    (la, ga), (lb, gb) = a, b
    assert la.item() == pytest.approx(lb.item(), abs=atol)
    assert ga.keys() == gb.keys() and "item_emb.weight" in ga
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=atol, rtol=0), (k, (ga[k] - gb[k]).abs().max())


# ---- chunked CE ----

@pytest.mark.parametrize("chunk", [1, 5, N_ITEMS, 1000])
def test_chunked_ce_has_the_loss_and_gradients_of_full_ce(chunk):
    model, x, y = _tiny()
    _assert_same(_loss_and_grads(model, x, y, "ce", ce_chunk_items=chunk), _loss_and_grads(model, x, y, "ce"))


def test_chunked_ce_backward_passes_gradcheck():
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 6, 2, 2])
    assert torch.autograd.gradcheck(lambda h, W: L._ChunkedCE.apply(h, W, rows, 3), (h, W))


# ---- sampled softmax ----

def test_sampled_softmax_over_every_item_with_uniform_q_is_full_ce():
    # uniform Q: the constant log Q cancels in the softmax; the positive's own copy among the negatives
    # is an accidental hit, masked, so every item appears exactly once — the full softmax, exactly.
    model, x, y = _tiny()
    sampler = L.negative_sampler("uniform", N_ITEMS)
    every_item = torch.arange(1, N_ITEMS + 1)
    _assert_same(_loss_and_grads(model, x, y, "sampled_softmax", every_item, log_q=sampler.log_q),
                 _loss_and_grads(model, x, y, "ce"))


def test_sampled_softmax_masks_accidental_hits_and_corrects_by_log_q():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    E = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0], [0.5, 3.0]])  # row 0: padding
    targets = torch.tensor([1, 3])
    negatives = torch.tensor([1, 2, 2])  # item 1 is position 0's positive: a hit there, not at position 1
    log_q = torch.log(torch.tensor([0.0, 0.2, 0.5, 0.3]))
    s = h @ E.T - log_q  # corrected scores (2, 4)
    want0 = torch.logsumexp(torch.stack([s[0, 1], s[0, 2], s[0, 2]]), 0) - s[0, 1]  # hit dropped
    want1 = torch.logsumexp(torch.stack([s[1, 3], s[1, 1], s[1, 2], s[1, 2]]), 0) - s[1, 3]
    got = L.sampled_softmax(h, E, targets, negatives, log_q)
    assert got.item() == pytest.approx(((want0 + want1) / 2).item(), rel=1e-6)


def test_popularity_sampler_draws_by_train_counts_from_its_generator():
    seqs = [np.array([1, 1, 1, 2]), np.array([1, 3, 3, 3, 3, 3])]  # counts: 4, 1, 5; item 4 never seen
    sampler = L.negative_sampler("popularity", 4, seqs)
    assert torch.allclose(sampler.log_q, torch.log(torch.tensor([0.0, 0.4, 0.1, 0.5, 0.0])))
    draw = sampler.sample(20_000, torch.Generator().manual_seed(3))
    assert torch.equal(draw, sampler.sample(20_000, torch.Generator().manual_seed(3)))
    freq = torch.bincount(draw, minlength=5).double() / len(draw)
    assert freq[0] == 0 and freq[4] == 0  # neither padding nor an unseen item is ever drawn
    assert torch.allclose(freq[1:4], torch.tensor([0.4, 0.1, 0.5], dtype=torch.float64), atol=0.02)
    uniform = L.negative_sampler("uniform", 4).sample(1000, torch.Generator().manual_seed(0))
    assert uniform.min() >= 1 and uniform.max() <= 4


# ---- gBCE ----

def test_gbce_beta_on_hand_values():
    # α = k/(N−1) = 100/1000 = 0.1; β = α(t(1 − 1/α) + 1/α) = 0.1 (0.75 (1 − 10) + 10) = 0.325
    assert L.gbce_beta(100, 1001, 0.75) == pytest.approx(0.325)
    assert L.gbce_beta(100, 1001, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    assert L.gbce_beta(100, 1001, 1.0) == pytest.approx(0.1)  # t = 1: β = α
    assert L.gbce_beta(256, 1350, 0.75) == pytest.approx(1 - 0.75 * (1 - 256 / 1349))
    for bad in ((0, 1001, 0.5), (1001, 1001, 0.5), (10, 1001, 1.5)):
        with pytest.raises(ValueError):
            L.gbce_beta(*bad)


def test_gbce_matches_the_papers_positive_logit_transform():
    # gSASRec's README: gBCE = BCE with the positive logit replaced by γ(s) = log(1 / (σ(s)^−β − 1))
    torch.manual_seed(1)
    h, E = torch.randn(6, 4, dtype=torch.float64), torch.randn(N_ITEMS + 1, 4, dtype=torch.float64)
    targets, negatives = torch.randint(1, N_ITEMS + 1, (6,)), torch.randint(1, N_ITEMS + 1, (9,))
    negatives[0] = targets[2]  # one accidental hit, dropped from position 2's sum
    beta = L.gbce_beta(len(negatives), N_ITEMS, 0.75)
    pos = (h * E[targets]).sum(-1)
    gamma = torch.log(1 / (torch.sigmoid(pos) ** -beta - 1))
    neg = h @ E[negatives].T
    bce_neg = F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none")
    bce_neg = bce_neg.masked_fill(negatives[None, :] == targets[:, None], 0.0)
    want = (F.binary_cross_entropy_with_logits(gamma, torch.ones_like(gamma), reduction="none")
            + bce_neg.sum(1)) / (len(negatives) + 1)
    assert L.gbce(h, E, targets, negatives, beta).item() == pytest.approx(want.mean().item(), rel=1e-9)


# ---- config ----

@pytest.mark.parametrize("bad,match,by_argparse", [
    ({"loss": "softmax"}, "loss must be one of", True),  # a flag outside its choices: argparse's own error
    ({"n_negatives": 0}, "n_negatives must be", False),
    ({"negatives": "in_batch"}, "negatives must be one of", True),
    ({"ce_chunk_items": -1}, "ce_chunk_items must be", False),
    ({"gbce_t": 1.5}, "gbce_t must be in", False),
    ({"loss": "gbce", "negatives": "popularity"}, "uniform negatives", False),
])
def test_bad_loss_settings_are_refused_in_code_yaml_and_flags(bad, match, by_argparse):
    from shielded_recrl.ranker import train_sasrec

    with pytest.raises(ValueError, match=match):
        SASRecTrainConfig(**bad)
    with pytest.raises(ValueError, match=match):
        merge_yaml(SASRecTrainConfig, SASRecTrainConfig(), dict(bad), "test.yaml", None)
    flags = [a for k, v in bad.items() for a in (f"--{k}", str(v))]
    with pytest.raises(SystemExit if by_argparse else InputError, match=None if by_argparse else match):
        train_sasrec.parse(flags)


def test_new_settings_reach_the_config_from_flags():
    from shielded_recrl.ranker import train_sasrec

    cfg, _ = train_sasrec.parse(["--loss", "gbce", "--n_negatives", "64", "--gbce_t", "0.5", "--ce_chunk_items", "9"])
    assert (cfg.loss, cfg.n_negatives, cfg.gbce_t, cfg.ce_chunk_items) == ("gbce", 64, 0.5, 9)
    assert SASRecTrainConfig().loss == "ce" and SASRecTrainConfig().ce_chunk_items == 0  # full CE stays default


def test_loss_record_holds_the_settings_the_loss_reads():
    assert loss_record(SASRecTrainConfig(), 100) == {"loss": "ce", "ce_chunk_items": 0}
    assert loss_record(SASRecTrainConfig(loss="sampled_softmax", negatives="popularity", n_negatives=8), 100) == {
        "loss": "sampled_softmax", "negatives": "popularity", "n_negatives": 8}
    rec = loss_record(SASRecTrainConfig(loss="gbce", n_negatives=99, gbce_t=0.75), 100)
    assert rec["gbce_alpha"] == 1.0 and rec["gbce_beta"] == pytest.approx(1.0) and rec["gbce_t"] == 0.75
    assert set(unused_settings("ce")) == {"negatives", "n_negatives", "gbce_t"}
    assert "n_negatives" not in unused_settings("gbce") and "ce_chunk_items" in unused_settings("gbce")


# ---- training on real data ----

@pytest.mark.slow
def test_chunked_ce_trains_like_full_ce_and_the_sampled_losses_run(ml100k_processed):
    data = _subset(ml100k_processed, 60)
    base = dict(hidden=8, max_len=10, epochs=1, batch_size=64, device="cpu", seed=2)
    loss = {}
    for name, kw in {"ce": {}, "ce_chunked": {"ce_chunk_items": 100},
                     "sampled_softmax": {"loss": "sampled_softmax", "negatives": "popularity", "n_negatives": 32},
                     "gbce": {"loss": "gbce", "n_negatives": 32},
                     "bce": {"loss": "bce"}}.items():  # its negatives avoid train items via per-user lists
        _, history = train_model(SASRecTrainConfig(**base, **kw), data)
        loss[name] = history[0]["train/loss"]
        assert math.isfinite(loss[name]) and history[0]["valid/full_masked/ndcg@10"] >= 0
    assert loss["ce_chunked"] == pytest.approx(loss["ce"], abs=1e-4)


@pytest.mark.slow
def test_sampled_softmax_trains_past_most_popular_on_validation(ml100k_processed):
    # validation NDCG@10, full ranking with seen items masked; most-popular scores ≈ 0.034 on ML-100K
    data = ml100k_processed
    cfg = SASRecTrainConfig(hidden=32, max_len=20, epochs=3, batch_size=128, lr=2e-3, device="cpu",
                            loss="sampled_softmax", negatives="popularity", n_negatives=128)
    _, history = train_model(cfg, data)
    val = max(h["valid/full_masked/ndcg@10"] for h in history)  # the epoch train_model selects
    pop = evaluate_scorer(baselines.popularity_scorer(data.sequences("train"), data.n_items),
                          eval_inputs(data, "valid", cfg.max_len),
                          protocols=("full_masked",))["metrics"]["full_masked"]["ndcg@10"]
    print(f"val ndcg@10 sampled-softmax sasrec {val:.4f} vs most-popular {pop:.4f}")
    assert history[0]["train/loss"] > history[-1]["train/loss"]
    assert val > 1.3 * pop, (val, pop)


@pytest.mark.slow
def test_entry_script_records_the_loss_in_checkpoint_and_manifest(ml100k_processed, monkeypatch, capsys):
    from shielded_recrl.ranker import train_sasrec

    root = ml100k_processed.folder.parents[2]
    monkeypatch.setenv(paths.ROOT_ENV, str(root))
    out = root / "checkpoints" / "sasrec_gbce.pt"
    train_sasrec.main(["--dataset", "ml100k", "--epochs", "1", "--hidden", "8", "--max_len", "10", "--threads", "1",
                       "--device", "cpu", "--loss", "gbce", "--n_negatives", "16", "--gbce_t", "0.5",
                       "--out", str(out)])
    capsys.readouterr()
    want = loss_record(SASRecTrainConfig(loss="gbce", n_negatives=16, gbce_t=0.5), ml100k_processed.n_items)
    _, raw = load_ranker(out)
    man = json.loads(out.with_name("sasrec_gbce.manifest.json").read_text())
    assert raw["loss"] == want and man["loss"] == want
    assert raw["train_config"]["loss"] == man["config"]["loss"] == "gbce"
