"""Exact values for the advantage estimators, worked out by hand in the comments."""

import pytest
import torch

from turnrl.trainer.advantages import spread_to_tokens, turn_gae

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


# ---------------------------------------------------------------- RLOO and GRPO
from turnrl.trainer.advantages import episode_returns, grpo_advantages, rloo_advantages  # noqa: E402


def test_rloo_by_hand():
    # group 0: R = 1, 0, 0, 1 -> A_i = R_i - mean of the other three
    #   A0 = 1 - (0 + 0 + 1)/3 = 2/3; A1 = 0 - (1 + 0 + 1)/3 = -2/3; A2 = -2/3; A3 = 2/3
    # group 1: R = 3, 5 -> A = 3 - 5 = -2, 5 - 3 = 2
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 5.0])
    adv = rloo_advantages(returns, [0, 0, 0, 0, 1, 1])
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, -2.0, 2.0])


def test_rloo_groups_need_not_be_contiguous():
    adv = rloo_advantages(torch.tensor([3.0, 1.0, 5.0, 1.0]), [7, 2, 7, 2])
    assert adv.tolist() == pytest.approx([-2.0, 0.0, 2.0, 0.0])


def test_grpo_by_hand():
    # group: R = 1, 0, 0, 1: mean 0.5; sample std = sqrt(4 * 0.25 / 3) = 0.57735
    #   A = +-0.5 / 0.57735 = +-0.866025
    # group: R = 2, 2: equal returns -> 0 (no signal, no division blow-up)
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    adv = grpo_advantages(returns, [0, 0, 0, 0, 1, 1])
    assert adv.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025, 0.0, 0.0], abs=1e-5)


def test_grpo_without_std_is_mean_centred_only():
    # Dr. GRPO: R = 0.2, 0.0 -> A = 0.1, -0.1 (with the std: +-0.7071 whatever the scale)
    returns = torch.tensor([0.2, 0.0])
    assert grpo_advantages(returns, [0, 0], scale_by_std=False).tolist() == pytest.approx([0.1, -0.1])
    assert grpo_advantages(returns, [0, 0]).tolist() == pytest.approx([0.70711, -0.70711], abs=1e-4)


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_of_one_is_an_error(fn):
    with pytest.raises(ValueError, match="fewer than 2 episodes.*group_size >= 2"):
        fn(torch.tensor([1.0, 0.0, 1.0]), [0, 0, 1])


def test_episode_returns_discount_per_turn_and_ignore_padding():
    # row 0: 0 + 0.9 * 0 + 0.81 * 1 = 0.81; row 1: one turn, 2 (padding rewards ignored)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    assert episode_returns(rewards, mask, 0.9).tolist() == pytest.approx([0.81, 2.0])


def test_long_episodes_do_not_weigh_more_in_the_group_baseline():
    # One group of three episodes with returns 1, 0, 0 but 1, 5 and 1 turns: the baseline
    # is a mean over episodes (1/3), not over turns (1/7 if every turn counted once).
    from turnrl.trainer import estimators
    from turnrl.trainer.turns import TurnBatch

    rewards = torch.zeros(3, 5)
    rewards[0, 0] = 1.0
    mask = torch.zeros(3, 5)
    mask[0, :1], mask[1, :5], mask[2, :1] = 1, 1, 1
    turns = TurnBatch(rewards=rewards, values=torch.zeros(3, 6), turn_mask=mask,
                      terminated=torch.ones(3, dtype=torch.bool), groups=[0, 0, 0])
    for estimator, expected in (
        (lambda t: estimators.rloo(t, gamma=1.0), [1.0, -0.5, -0.5]),  # 1 - 0; 0 - (1 + 0)/2
        (lambda t: estimators.grpo(t, gamma=1.0, group_std=True),  # (R - 1/3) / 0.57735
         [1.1547, -0.57735, -0.57735]),
    ):
        adv, ret = estimator(turns)
        # every real turn of an episode carries that episode's advantage; padding is 0
        assert adv[:, 0].tolist() == pytest.approx(expected, abs=1e-4)
        assert adv[1].tolist() == pytest.approx([expected[1]] * 5, abs=1e-4)
        assert adv[0, 1:].abs().sum() == 0 and adv[2, 1:].abs().sum() == 0
        assert ret[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_batch_normalisation_of_episode_advantages_counts_episodes():
    # Episodes with advantages +1 (1 turn) and -1 (3 turns): over episodes the mean is 0
    # and they stay symmetric; over turns the mean would be -0.5.
    from turnrl.trainer.turns import whiten

    adv = torch.tensor([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    out = whiten(adv, mask, per_episode=True)
    assert out[0, 0].item() == pytest.approx(-out[1, 0].item())
    assert out[1].tolist() == pytest.approx([out[1, 0].item()] * 3)
    assert out[0, 1:].tolist() == [0.0, 0.0]


def test_ospo_by_hand():
    from turnrl.trainer.advantages import ospo_advantages

    # Episode 0: round 0 has decisions with rewards 1, 0, 2 (turns 0-2); round 1 one decision
    # (turn 3). Episode 1: round 0 has rewards 3, 1 (turns 0-1), then padding.
    #   group (ep 0, round 0): mean 1, sample std 1 -> A = 0, -1, 1
    #   group (ep 0, round 1): one decision -> 0 (nobody to compare with)
    #   group (ep 1, round 0): mean 2, sample std sqrt(2) -> A = +-0.70711
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0], [3.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    groups = torch.tensor([[0, 0, 0, 1], [2, 2, -1, -1]])
    adv = ospo_advantages(rewards, mask, groups)
    assert adv[0].tolist() == pytest.approx([0.0, -1.0, 1.0, 0.0], abs=1e-5)
    assert adv[1].tolist() == pytest.approx([0.70711, -0.70711, 0.0, 0.0], abs=1e-5)
    # without the std: centred rewards only
    plain = ospo_advantages(rewards, mask, groups, scale_by_std=False)
    assert plain[1, :2].tolist() == pytest.approx([1.0, -1.0])


# ---------------------------------------------------------------- ties and no-signal batches
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tied_groups_get_exactly_zero(dtype):
    from turnrl.trainer.advantages import ospo_advantages

    # 8 equal returns of 123.4: float32's mean is an ulp off and its std ~1e-5, which eps
    # 1e-6 does not absorb -- without tie detection each member got about -0.83
    tied = torch.full((8,), 123.4, dtype=dtype)
    assert grpo_advantages(tied, [0] * 8).abs().max().item() == 0.0
    assert grpo_advantages(tied, [0] * 8, scale_by_std=False).abs().max().item() == 0.0
    assert rloo_advantages(tied, [0] * 8).abs().max().item() == 0.0
    # equal in exact arithmetic, reached by different reward sequences: 4 x -0.1 vs 2 x -0.2
    # vs 0.1 + 0.2 - 0.7 (float32 sums differ by an ulp)
    r = torch.tensor([[-0.1, -0.1, -0.1, -0.1], [-0.2, -0.2, 0.0, 0.0],
                      [0.1, 0.2, -0.7, 0.0]], dtype=dtype).sum(dim=1)
    assert grpo_advantages(r, [0, 0, 0]).abs().max().item() == 0.0
    assert rloo_advantages(r, [0, 0, 0]).abs().max().item() == 0.0
    rewards = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=dtype)
    turn_groups = torch.tensor([[0, 0], [0, 0]])
    assert ospo_advantages(rewards, torch.ones(2, 2), turn_groups).abs().max().item() == 0.0
    # a tied group next to a real one: only the real one gets advantages
    mixed = torch.tensor([2.0, 2.0, 1.0, 0.0], dtype=dtype)
    adv = grpo_advantages(mixed, [0, 0, 1, 1])
    assert adv[:2].tolist() == [0.0, 0.0] and adv[2].item() == pytest.approx(0.70711, abs=1e-4)


def test_a_batch_without_signal_stays_zero_after_whitening():
    from turnrl.trainer import estimators
    from turnrl.trainer.turns import TurnBatch, whiten

    # every group tied (all episodes 4 invalid replies at -0.1): advantages are exactly 0,
    # and whitening them (normalize_advantages) must not turn float noise into +-1.3
    rewards = torch.full((8, 4), -0.1)
    mask = torch.ones(8, 4)
    turns = TurnBatch(rewards=rewards, values=torch.zeros(8, 5), turn_mask=mask,
                      terminated=torch.ones(8, dtype=torch.bool), groups=[0] * 4 + [1] * 4)
    adv, _ = estimators.grpo(turns, gamma=1.0, group_std=True)
    out = whiten(adv, mask, per_episode=True)
    assert out.abs().max().item() == 0.0
    # a constant batch is left alone, not divided by a std of ~0
    noisy = torch.full((4, 1), 0.3) + torch.tensor([[0.0], [1e-8], [0.0], [-1e-8]])
    assert torch.equal(whiten(noisy, torch.ones(4, 1), per_episode=False), noisy)


def test_group_advantages_match_an_independent_implementation():
    import math
    import random

    from turnrl.trainer.advantages import ospo_advantages

    rng = random.Random(0)
    for _ in range(50):
        n_groups, size = rng.randint(1, 4), rng.randint(2, 6)
        groups = [g for g in range(n_groups) for _ in range(size)]
        returns = [round(rng.uniform(-2, 2), rng.choice([1, 3])) for _ in groups]
        got_grpo = grpo_advantages(torch.tensor(returns), groups).tolist()
        got_rloo = rloo_advantages(torch.tensor(returns), groups).tolist()
        for g in range(n_groups):
            members = [i for i, x in enumerate(groups) if x == g]
            r = [returns[i] for i in members]
            mean = sum(r) / len(r)
            std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
            tied = max(r) == min(r)
            for k, i in enumerate(members):
                want_grpo = 0.0 if tied else (r[k] - mean) / (std + 1e-6)
                want_rloo = 0.0 if tied else r[k] - (sum(r) - r[k]) / (len(r) - 1)
                assert got_grpo[i] == pytest.approx(want_grpo, abs=1e-5)
                assert got_rloo[i] == pytest.approx(want_rloo, abs=1e-5)
        # ospo: the same statistics over turn groups
        rewards = torch.tensor([returns])
        adv = ospo_advantages(rewards, torch.ones_like(rewards), torch.tensor([groups]))
        assert adv[0].tolist() == pytest.approx(got_grpo, abs=1e-6)
