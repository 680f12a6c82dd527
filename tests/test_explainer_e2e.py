"""End to end: the warm start with the real offline SmolLM2-135M on ML-100K (CPU, a few dozen steps).

Checks measurable properties, not strings: validation loss (held-out users) falls, and the greedy
explanations after warm start are non-empty, mostly ASCII English, and name the recommended item.
The ranker is a randomly initialised SASRec of the right shape (the bridge needs its shape and ids;
a trained one is not required to test the stage). Everything is written under a temporary root.
"""

from __future__ import annotations

import json
import re

import pytest

from test_explainer_unit import converted_smollm2, make_root, one_torch_thread, save_random_ranker  # noqa: F401

STOP = {"the", "a", "and", "of", "you", "it", "is", "to", "in", "this", "for", "with", "may", "like", "film", "movie"}


@pytest.mark.slow
def test_warm_start_smollm2_ml100k(ml100k_processed, tmp_path_factory, tmp_path, monkeypatch):
    from shielded_recrl.explainer import init_lora
    from shielded_recrl.explainer.loading import CACHE_ENV

    cache = converted_smollm2(tmp_path_factory).parent  # converted once per session, never under data/
    root = make_root(tmp_path, ml100k_processed)
    monkeypatch.setenv("RECRL_ROOT", str(root))
    monkeypatch.setenv(CACHE_ENV, str(cache))
    save_random_ranker(root, ml100k_processed)
    m = init_lora.main(["--dataset", "ml100k", "--max_train_examples", "64", "--max_val_examples", "6",
                        "--micro_batch_size", "2", "--grad_accum", "1", "--max_steps", "16", "--eval_every", "8",
                        "--patience", "5", "--lr", "1e-3", "--warmup_steps", "2",
                        "--max_seq_len_explainer", "160", "--explanation_max_len", "40", "--max_history", "2",
                        "--n_samples", "3", "--max_new_tokens", "32", "--lora_rank", "8"])
    metrics = m["metrics"]
    assert metrics["val_loss_after"] < metrics["val_loss_before"] - 0.1, metrics
    samples = json.loads((root / "logs" / "ml100k" / "lora_init" / "samples.json").read_text())
    assert len(samples) == 3
    named = 0
    for s in samples:
        text = s["after"]
        assert len(text.split()) >= 4, s
        assert sum(c.isascii() for c in text) / len(text) > 0.95, s
        words = re.findall(r"[A-Za-z']+", text.lower())
        assert sum(w in STOP or w in {"because", "enjoyed", "also", "if", "i", "your", "are", "that", "be"}
                   for w in words) >= 2, s  # English function words, not a list of tokens
        title_words = [w for w in re.findall(r"[A-Za-z']+", s["item"].lower()) if w not in STOP]
        named += any(w in words for w in title_words) or s["item"].lower() in text.lower()
    assert named >= 2, samples
    assert (root / "checkpoints" / "lora_init_ml100k" / "adapter" / "adapter_model.safetensors").exists()
