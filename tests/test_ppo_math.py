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
