"""PPO maths against values computed by hand (comments show the arithmetic); padding must not matter."""

import math

import pytest
import torch

from shielded_recrl.trainer import ppo_math as P

t = lambda *rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731


def test_gae_gamma1_lam1_reward_at_end():
    # δ = (0, 0, 1 − 0.5); A_t = Σ δ → 0.5 everywhere; returns = A + V = 1
    adv, ret = P.gae(t([0, 0, 1.0]), t([0.5, 0.5, 0.5]), t([1, 1, 1.0]), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, t([0.5, 0.5, 0.5]))
    assert torch.allclose(ret, t([1.0, 1.0, 1.0]))


def test_gae_discounted_with_padding():
    # mask (1,1,0): t=1 is terminal → δ1 = 0 − 2 = −2, A1 = −2; δ0 = 1 + 0.9·2 − 1 = 1.8,
    # A0 = 1.8 + 0.9·0.5·(−2) = 0.9; returns (1.9, 0, 0). The padded reward/value (99) is ignored.
    adv, ret = P.gae(t([1.0, 0, 99]), t([1.0, 2, 99]), t([1, 1, 0.0]), gamma=0.9, lam=0.5)
    assert torch.allclose(adv, t([0.9, -2.0, 0.0]))
    assert torch.allclose(ret, t([1.9, 0.0, 0.0]))


def test_whiten_masked_unbiased():
    # real values 1,2,3: mean 2, Bessel variance 1 → (−1, 0, 1); the padded 100 is ignored and zeroed
    out = P.whiten(t([1.0, 2, 3, 100]), t([1, 1, 1, 0.0]), eps=0.0)
    assert torch.allclose(out, t([-1.0, 0, 1, 0]))
    out = P.whiten(t([1.0, 2, 3, 100]), t([1, 1, 1, 0.0]), shift_mean=False, eps=0.0)
    assert torch.allclose(out, t([1.0, 2, 3, 0]))


def test_clipped_policy_loss_hand_values():
    logp = torch.log(t([1.5, 0.5, 1.0, 50.0]))  # old_logp = 0 → ratios 1.5, 0.5, 1, (50 padded)
    adv, mask = t([1.0, 1.0, -1.0, 7.0]), t([1, 1, 1, 0.0])
    out = P.clipped_policy_loss(logp, torch.zeros_like(logp), adv, mask, clip=0.2)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped); token 2: max(−0.5, −0.8) = −0.5; token 3: 1
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3)
    assert out.clip_frac.item() == pytest.approx(1 / 3)
    # k3: (0.5 − ln 1.5) + (−0.5 − ln 0.5) + 0, over 3 tokens
    assert out.approx_kl.item() == pytest.approx((0.5 - math.log(1.5) - 0.5 - math.log(0.5)) / 3)


def test_clipped_policy_loss_gradient_zero_when_clipped():
    logp = torch.log(t([1.5])).requires_grad_()
    P.clipped_policy_loss(logp, t([0.0]), t([1.0]), t([1.0]), clip=0.2).loss.backward()
    assert logp.grad.item() == 0.0


def test_clipped_value_loss_hand_values():
    # token 1: (1 − 1)² = 0 vs (0.2 − 1)² = 0.64 → 0.64 (clipped); token 2: 1 vs 1 → 1; padded ignored
    loss, frac = P.clipped_value_loss(t([1.0, 0.0, 9.0]), t([0.0, 0.0, 0.0]), t([1.0, 1.0, -9.0]),
                                      t([1, 1, 0.0]), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_kl_estimators():
    logp, ref = torch.log(t([0.5])), torch.log(t([0.25]))
    assert P.kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert P.kl_penalty(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))  # r = 0.5: (r−1) − ln r
    assert P.kl_penalty(ref, logp, "k3").item() == pytest.approx(1.0 - math.log(2))  # r = 2
    with pytest.raises(ValueError, match="k1"):
        P.kl_penalty(logp, ref, "k2")


def test_per_token_rewards_score_at_last_real_token():
    logp = torch.zeros(2, 3, dtype=torch.float64)
    ref = t([-1.0, 0, -1], [0, -2.0, 5])  # k1 = (1,0,1), (0,2,·)
    mask = t([1, 1, 1.0], [1, 1, 0.0])
    rewards, kl = P.per_token_rewards(t(2.0, -1.0), logp, ref, mask, kl_beta=0.1)
    assert torch.allclose(rewards, t([-0.1, 0.0, 1.9], [0.0, -1.2, 0.0]))
    assert torch.allclose(kl, t([1.0, 0, 1], [0, 2.0, 0]))
    with pytest.raises(ValueError, match="empty row"):
        P.per_token_rewards(t(1.0), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 0.1)


def test_explained_variance():
    # residual (0,0,−1): var 2/9; var y = 2/3 → 1 − 1/3
    assert P.explained_variance(t([1.0, 2, 4, 0]), t([1.0, 2, 3, 8]), t([1, 1, 1, 0.0])) == pytest.approx(2 / 3)
    assert math.isnan(P.explained_variance(t([1.0, 2]), t([3.0, 3])))


# --- group advantages (issue 13) ------------------------------------------------------------------------
def test_group_advantages_of_a_constant_reward_are_zero_and_follow_their_definitions():
    from shielded_recrl.trainer.ppo_math import group_advantages

    const = torch.tensor([0.9, 0.9, 0.9, 0.3, 0.3, 0.3])
    for kind in ("rloo", "grpo"):
        assert torch.equal(group_advantages(const, 3, kind), torch.zeros(6))
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    rloo = group_advantages(r, 3, "rloo")
    want = torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0.0])  # r_i − mean of the others
    torch.testing.assert_close(rloo, want)
    grpo = group_advantages(r, 3, "grpo")
    g = r.reshape(2, 3)
    torch.testing.assert_close(grpo, ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + 1e-6)).reshape(-1))
    # adding a per-prompt constant (the user's ζ_u, the item's z) changes nothing
    shift = torch.tensor([5.0, 5.0, 5.0, -2.0, -2.0, -2.0])
    for kind in ("rloo", "grpo"):
        torch.testing.assert_close(group_advantages(r + shift, 3, kind), group_advantages(r, 3, kind))


def test_lr_scale_warms_up_then_stays_or_falls_linearly():
    assert [P.lr_scale(k, 8, 4) for k in range(8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [P.lr_scale(k, 8, 4, "linear") for k in range(8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [P.lr_scale(k, 4, 0, "linear") for k in range(4)] == [1.0, 0.75, 0.5, 0.25]  # never 0
    assert [P.lr_scale(k, 3, 3, "linear") for k in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    with pytest.raises(ValueError, match="step"):
        P.lr_scale(8, 8, 4)
    with pytest.raises(ValueError, match="decay"):
        P.lr_scale(5, 8, 4, "cosine")


def test_group_advantages_refuse_bad_shapes():
    from shielded_recrl.trainer.ppo_math import group_advantages

    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="kind"):
        group_advantages(torch.zeros(4), 2, "gae")


def test_gae_first_advantages_do_not_follow_length_once_the_critic_starts_at_the_reward_level():
    """Issue 13 point 2: a critic at 0 with rewards ≈ 0.9 makes GAE's first advantages λ^{L−1−t}·R — after
    whitening, short responses positive and long ones negative whatever their content. Started at the
    batch-mean reward (what PPOTrainer does, ValueHead.start_at), the advantage follows the reward only."""
    from shielded_recrl.trainer.ppo import ValueHead
    from shielded_recrl.trainer.ppo_math import advantages

    g = torch.Generator().manual_seed(0)
    B, T = 256, 32
    lengths = torch.randint(4, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    score = 0.9 + 0.01 * torch.randn(B, generator=g)  # a click reward: high, independent of length
    zeros = torch.zeros(B, T)

    def length_corr(values):
        adv, _, _ = advantages("gae", score, zeros, zeros, values, mask, kl_beta=0.0, gamma=1.0, lam=0.95)
        per_response = (adv * mask).sum(1) / mask.sum(1)
        return float(torch.corrcoef(torch.stack([per_response, lengths.float()]))[0, 1])

    assert length_corr(zeros) < -0.5  # the artefact, with the old zero start
    head = ValueHead(8)
    head.start_at(float(score.mean()))
    started = head(torch.randn(B, T, 8)) * mask
    assert abs(length_corr(started)) < 0.2 and bool(head.started)
    rloo, _, _ = advantages("rloo", torch.full((B,), 0.9), zeros, zeros, zeros, mask, kl_beta=0.05, group_size=4)
    assert torch.equal(rloo, torch.zeros_like(rloo))  # a constant reward gives no advantage
