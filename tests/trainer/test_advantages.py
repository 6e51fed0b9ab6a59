"""Exact values for the advantage estimators, worked out by hand in the comments."""

import pytest
import torch

from turnrl.trainer.advantages import masked_whiten, spread_to_tokens, turn_gae

GAMMA, LAM = 0.9, 0.8  # gamma * lam = 0.72


def _one(terminated: bool):
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.9]])  # V0, V1, V2 and V3 = V(final observation)
    mask = torch.ones(1, 3)
    return turn_gae(rewards, values, mask, torch.tensor([terminated]), gamma=GAMMA, lam=LAM)


def test_gae_terminated_does_not_bootstrap():
    # delta2 = 1 + 0.9 * 0.9 * (1 - 1) - 0.7 = 0.3
    # delta1 = 0 + 0.9 * 0.7 - 0.6 = 0.03
    # delta0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.72 * 0.3 = 0.246; A0 = 0.04 + 0.72 * 0.246 = 0.21712
    adv, ret = _one(terminated=True)
    assert adv[0].tolist() == pytest.approx([0.21712, 0.246, 0.3])
    assert ret[0].tolist() == pytest.approx([0.71712, 0.846, 1.0])  # A + V


def test_gae_truncated_bootstraps_from_final_observation():
    # delta2 = 1 + 0.9 * 0.9 - 0.7 = 1.11 (V3 = 0.9 is used: the episode was cut, not over)
    # A1 = 0.03 + 0.72 * 1.11 = 0.8292; A0 = 0.04 + 0.72 * 0.8292 = 0.637024
    adv, _ = _one(terminated=False)
    assert adv[0].tolist() == pytest.approx([0.637024, 0.8292, 1.11])


def test_gae_batch_with_padding_ignores_padded_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.9], [1.0, 5.0, 100.0, -100.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    adv, ret = turn_gae(rewards, values, mask, torch.tensor([True, True]), gamma=GAMMA, lam=LAM)
    # row 1: one terminated turn: A0 = 2 - 1 = 1 (V1 = 5 is not used: terminated)
    assert adv[1].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert adv[0].tolist() == pytest.approx([0.21712, 0.246, 0.3])
    # truncated one-turn row bootstraps from V1 = 5: A0 = 2 + 0.9 * 5 - 1 = 5.5
    adv, _ = turn_gae(rewards, values, mask, torch.tensor([True, False]), gamma=GAMMA, lam=LAM)
    assert adv[1, 0].item() == pytest.approx(5.5)


def test_scrambled_padding_changes_nothing():
    torch.manual_seed(0)
    rewards = torch.randn(4, 6)
    values = torch.randn(4, 7)
    lengths = torch.tensor([6, 3, 1, 4])
    mask = (torch.arange(6)[None] < lengths[:, None]).float()
    rewards = rewards * mask
    term = torch.tensor([True, False, True, False])
    adv, ret = turn_gae(rewards, values, mask, term, gamma=0.99, lam=0.95)
    # scramble values after each row's bootstrap slot and rewards on padding
    v2, r2 = values.clone(), rewards.clone()
    for i, n in enumerate(lengths.tolist()):
        v2[i, n + 1:] = torch.randn(6 - n)
        r2[i, n:] = torch.randn(6 - n) * 0  # rewards on padding are zero by contract
    adv2, ret2 = turn_gae(r2, v2, mask, term, gamma=0.99, lam=0.95)
    assert torch.allclose(adv, adv2) and torch.allclose(ret, ret2)
    assert (adv[mask == 0] == 0).all()


def test_gae_matches_a_python_loop():
    torch.manual_seed(1)
    r, v = torch.randn(1, 5), torch.randn(1, 6)
    adv, _ = turn_gae(r, v, torch.ones(1, 5), torch.tensor([False]), gamma=0.97, lam=0.9)
    expected, running = [0.0] * 5, 0.0
    for t in reversed(range(5)):
        delta = r[0, t] + 0.97 * v[0, t + 1] - v[0, t]
        running = float(delta) + 0.97 * 0.9 * running
        expected[t] = running
    assert adv[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_spread_to_tokens():
    turn_adv = torch.tensor([[0.5, -1.0]])
    turn_index = torch.tensor([[-1, -1, 0, 0, -1, 1, 1, -1]])
    out = spread_to_tokens(turn_adv, turn_index)
    assert out.tolist() == [[0.0, 0.0, 0.5, 0.5, 0.0, -1.0, -1.0, 0.0]]


def test_bad_values_shape():
    with pytest.raises(ValueError, match="T\\+1"):
        turn_gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([True]),
                 gamma=1.0, lam=1.0)


def test_masked_whiten():
    x = torch.tensor([1.0, 3.0, 100.0])
    out = masked_whiten(x, torch.tensor([1.0, 1.0, 0.0]))
    assert out.tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
