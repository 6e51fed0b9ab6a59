"""Exact values for the losses; masked positions never matter."""

import math

import pytest
import torch

from turnrl.trainer.losses import aggregate, kl_penalty, nll_loss, policy_loss, value_loss


def test_policy_loss_clipping_by_hand():
    # token 1: ratio 1.5, A = +1 -> min(1.5, clip 1.2) -> loss -1.2
    # token 2: ratio 0.5, A = -1 -> max(0.5, 0.8) -> loss 0.8; token-mean = -0.2
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = policy_loss(logp, old, adv, torch.ones(1, 2))
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clipfrac"].item() == pytest.approx(1.0)


def test_dual_clip_caps_negative_advantage_loss():
    # ratio 5, A = -1: PPO loss max(5, 1.2) = 5; dual clip 3 caps it at 3
    logp = torch.tensor([[math.log(5.0)]])
    args = (logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert policy_loss(*args)[0].item() == pytest.approx(5.0)
    assert policy_loss(*args, dual_clip=3.0)[0].item() == pytest.approx(3.0)


def test_aggregation_modes():
    loss = torch.tensor([[1.0, 3.0], [10.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(14 / 3)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 10) / 2)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(loss, mask, "sum")


def test_value_loss_clipped_by_hand():
    # V = 1.0, old V = 0.5, R = 2: unclipped (1 - 2)^2 = 1; clipped V = 0.5 + 0.2 = 0.7,
    # (0.7 - 2)^2 = 1.69 -> 0.5 * max(1, 1.69) = 0.845
    args = (torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1))
    assert value_loss(*args, clip=0.2)[0].item() == pytest.approx(0.845)
    assert value_loss(*args, clip=None)[0].item() == pytest.approx(0.5)


def test_kl_estimators():
    logp, ref = torch.tensor([0.1]), torch.tensor([0.0])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.1)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.005)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-0.1) + 0.1 - 1, abs=1e-7)
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logp, ref, "k4")


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_scrambling_masked_positions_changes_no_loss(agg):
    torch.manual_seed(0)
    shape = (3, 7)
    mask = (torch.rand(shape) > 0.5).float()
    logp, old, adv = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    values, old_v, ret = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    ref = torch.randn(shape)

    def losses(lp, o, a, v, ov, r, rf):
        return (
            policy_loss(lp, o, a, mask, agg=agg, dual_clip=3.0)[0],
            value_loss(v, ov, r, mask, agg=agg)[0],
            aggregate(kl_penalty(lp, rf), mask, agg),
            nll_loss(lp, mask, agg),
        )

    base = losses(logp, old, adv, values, old_v, ret, ref)
    noise = lambda x: torch.where(mask > 0, x, torch.randn(shape) * 50)  # noqa: E731
    scrambled = losses(noise(logp), noise(old), noise(adv), noise(values), noise(old_v),
                       noise(ret), noise(ref))
    for a, b in zip(base, scrambled, strict=True):
        assert torch.isfinite(b)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_vldac_ratio_guard_drops_the_whole_turn():
    # Sample row: turn 0 has tokens with ratios 1.0 and 12 (> 10), turn 1 has ratio 2.
    # A = -1 everywhere. Without the guard PPO keeps the pessimistic unclipped term on
    # ratio-12 (loss 12) and on ratio 2 (loss 2). With the guard every token of turn 0 uses
    # the clipped term -A * clip(r, 0.9, 1.1): the ratio-12 token is clamped (no gradient),
    # the ratio-1 token is inside the range (same as plain PPO); turn 1 is untouched.
    logp = torch.tensor([[0.0, math.log(12.0), math.log(2.0), 0.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    adv = -torch.ones(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    turns = torch.tensor([[0, 0, 1, -1]])
    plain, _ = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.1, agg="token-mean")
    # tokens: max(1, 1) = 1; max(12, 1.1) = 12; max(2, 1.1) = 2 -> mean 5
    assert plain.item() == pytest.approx(5.0)
    guarded, stats = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.1,
                                 ratio_guard=10.0, turn_index=turns)
    # tokens: clip(1) = 1; clip(12) = 1.1; turn 1 unchanged: 2 -> mean 4.1 / 3
    assert guarded.item() == pytest.approx(4.1 / 3)
    assert stats["guard_frac"].item() == pytest.approx(2 / 3)
    guarded.backward()
    # d/dlogp of -A * r is r: 1/3 (token-mean over 3) on the in-range token, none on the
    # clamped one; on turn 1 the unclipped term 2 -> 2/3
    assert logp.grad[0].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3, 0.0])


def test_ratio_guard_ignores_masked_tokens_and_needs_turns():
    # a huge ratio on a masked (observation) token must not trip the guard
    logp = torch.tensor([[0.0, 50.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 0.0]]),
                              ratio_guard=10.0, turn_index=torch.tensor([[0, 0]]))
    assert stats["guard_frac"].item() == 0.0 and loss.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="turn_index"):
        policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), ratio_guard=10.0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_pieces_with_the_whole_batch_normalizer_add_up_to_the_whole(agg):
    # How micro-batches and training processes split a minibatch: each piece divides by
    # the whole batch's count, and the pieces' losses (and gradients) sum to the whole's.
    torch.manual_seed(1)
    shape = (5, 6)
    mask = (torch.rand(shape) > 0.4).float()
    mask[3] = 0.0  # a sequence without action tokens counts for neither mode
    logp = torch.randn(shape, requires_grad=True)
    old, adv, values, old_v, ret = (torch.randn(shape) for _ in range(5))
    count = float(mask.sum()) if agg == "token-mean" else float((mask.sum(-1) > 0).sum())
    assert count == (mask.sum() if agg == "token-mean" else 4)

    def losses(rows, normalizer=None):
        m, lp = mask[rows], logp[rows]
        return torch.stack([
            policy_loss(lp, old[rows], adv[rows], m, agg=agg, normalizer=normalizer)[0],
            value_loss(values[rows], old_v[rows], ret[rows], m, agg=agg, normalizer=normalizer)[0],
            aggregate(lp * 2.0, m, agg, normalizer=normalizer),
            nll_loss(lp, m, agg, normalizer=normalizer),
        ])

    whole = losses(slice(0, 5))
    pieces = losses(slice(0, 2), count) + losses(slice(2, 3), count) + losses(slice(3, 5), count)
    torch.testing.assert_close(pieces, whole)
    (grad_whole,) = torch.autograd.grad(whole.sum(), logp)
    (grad_pieces,) = torch.autograd.grad(pieces.sum(), logp)
    torch.testing.assert_close(grad_pieces, grad_whole)
    # without the normalizer, each piece is its own mean: the sum is not the whole's
    assert not torch.allclose(losses(slice(0, 2)) + losses(slice(2, 5)), whole)
