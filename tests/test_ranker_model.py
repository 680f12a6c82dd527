"""SASRec model properties and the ranker checkpoint (tiny random models, no data)."""

from __future__ import annotations

import pytest
import torch

from shielded_recrl.common.errors import InputError
from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker, save_ranker
from shielded_recrl.ranker.model import SASRec, SASRecConfig


def _model(seed=0, **kw) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(n_items=30, hidden=16, n_layers=2, n_heads=2, max_len=8, **kw)).eval()


def test_causality_future_items_do_not_change_earlier_states():
    model = _model()
    seqs = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2], [5, 6, 7, 8, 9, 10, 11, 12]])
    changed = seqs.clone()
    changed[:, 5] = torch.tensor([20, 21])  # change position 5 only
    with torch.no_grad():
        h, h2 = model(seqs), model(changed)
    assert torch.allclose(h[:, :5], h2[:, :5], atol=1e-6)
    assert not torch.allclose(h[:, 5:], h2[:, 5:])


def test_padding_positions_and_item_table_override():
    model = _model()
    seqs = torch.tensor([[0, 0, 0, 3, 7, 1, 9, 4]])
    with torch.no_grad():
        h = model(seqs)
        assert torch.all(model.ln_f(torch.zeros(16)) == h[0, 0])  # padded rows carry no item information
        same = model.scores(model.user_state(seqs, model.item_table.clone()), model.item_table.clone())
        assert torch.allclose(same, model.scores(model.user_state(seqs)))
        other = model.item_table * 2
        assert not torch.allclose(model.scores(model.user_state(seqs, other), other), same)


def test_checkpoint_weights_only_roundtrip_and_id_map_refusal(tmp_path):
    model = _model(seed=3)
    path = save_ranker(tmp_path / "sasrec_x.pt", model, extra={"id_map_sha256": "aaaa1111", "metrics": {"x": 0.5}})
    raw = torch.load(path, weights_only=True)  # tensors and plain values only
    assert raw["id_map_sha256"] == "aaaa1111" and raw["model_config"]["hidden"] == 16
    loaded, ckpt = load_ranker(path, expect_id_map="aaaa1111")
    seqs = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.user_state(seqs), model.user_state(seqs))
    assert len(checkpoint_sha256(path)) == 64
    with pytest.raises(InputError) as err:
        load_ranker(path, expect_id_map="bbbb2222")
    assert "aaaa1111" in str(err.value) and "bbbb2222" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        load_ranker(tmp_path / "missing.pt")


def test_item_embedding_scale_flag_and_checkpoints_written_before_it(tmp_path):
    from shielded_recrl.ranker.training import SASRecTrainConfig
    on, off = _model(seed=4), _model(seed=4, scale_item_emb=False)
    off.load_state_dict(on.state_dict())  # same weights: only the input scale differs
    seqs = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2]])
    with torch.no_grad():
        assert not torch.allclose(on(seqs), off(seqs))
    assert SASRecTrainConfig(scale_item_emb=False).model_config(30).scale_item_emb is False
    # a checkpoint saved before the flag existed has no such key: it must load with sqrt(d) scaling on
    path = save_ranker(tmp_path / "old.pt", on)
    raw = torch.load(path, weights_only=True)
    del raw["model_config"]["scale_item_emb"]
    torch.save(raw, path)
    loaded, _ = load_ranker(path)
    with torch.no_grad():
        assert loaded.cfg.scale_item_emb and torch.equal(loaded(seqs), on(seqs))
