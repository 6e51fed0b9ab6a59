"""The per-turn tensor helpers (turnrl.trainer.turns), with values worked by hand."""

import pytest

torch = pytest.importorskip("torch")

from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import turns as T  # noqa: E402
from turnrl.trajectory import Sample, Trajectory, Turn  # noqa: E402


def _traj(rewards, *, entry="e", group=None, terminated=True, failed=None, turn_groups=None):
    turns = [Turn(action="a", reward=r, observation="o") for r in rewards]
    if turns:
        turns[-1].terminated = terminated
        turns[-1].truncated = not terminated
    for turn, key in zip(turns, turn_groups or [], strict=False):
        if key is not None:
            turn.info["turn_group"] = key
    return Trajectory("env", 0, "", turns=turns, entry=entry, group=group, failed=failed)


def _sample(trajectory, value_turns, turn_index=(), loss_mask=None):
    n = max(len(turn_index), 1)
    turn_index = list(turn_index) or [-1]
    return Sample(input_ids=[0] * n, loss_mask=loss_mask or [int(t >= 0) for t in turn_index],
                  turn_index=turn_index, rollout_logprobs=[0.0] * n, value_turns=list(value_turns),
                  value_positions=[0] * len(value_turns), trajectory=trajectory)


def test_episode_tensors_pad_and_mark_only_real_terminations():
    trajs = [_traj([1.0, 2.0]), _traj([3.0], terminated=False), _traj([0.5], failed="crash")]
    rewards, mask, terminated = T.episode_tensors(trajs)
    assert rewards.tolist() == [[1.0, 2.0], [3.0, 0.0], [0.5, 0.0]]
    assert mask.tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    # truncated (a limit) and failed episodes bootstrap or are ignored, never "terminated"
    assert terminated.tolist() == [True, False, False]


def test_episode_tensors_of_turnless_episodes_have_one_padded_turn():
    rewards, mask, _ = T.episode_tensors([_traj([])])
    assert rewards.shape == (1, 1) and mask.tolist() == [[0.0]]


def test_turn_values_prefer_each_turns_own_sample():
    # window(1) samples of a 2-turn episode: sample 0 reads V(s0) and, as its bootstrap,
    # V(s1) = 0.9; sample 1 reads V(s1) = 0.4 itself and V(s2) = 0.7. V(s1) must be 0.4
    # (turn 1's own read), whatever the sample order.
    samples = [_sample(0, [0, 1]), _sample(0, [1, 2])]
    reads = [torch.tensor([0.1, 0.9]), torch.tensor([0.4, 0.7])]
    values = T.turn_values(samples, reads, 1, 2)
    assert values.tolist() == [[pytest.approx(0.1), pytest.approx(0.4), pytest.approx(0.7)]]
    flipped = T.turn_values(samples[::-1], reads[::-1], 1, 2)
    assert torch.equal(values, flipped)


def test_group_ids_share_entry_and_group():
    trajs = [_traj([0], entry="a", group=0), _traj([0], entry="a", group=0),
             _traj([0], entry="b", group=0), _traj([0], entry="a", group=1), _traj([0]),
             _traj([0])]
    # same group index in another entry is another group; ungrouped episodes stand alone
    assert T.group_ids(trajs) == [0, 0, 1, 2, 3, 4]


def test_turn_groups_number_pairs_of_episode_and_key():
    trajs = [_traj([0, 0, 0], turn_groups=["r0", "r0", "r1"]), _traj([0, 0], turn_groups=["r0", "r0"])]
    groups = T.turn_groups(trajs, 3, algorithm="ospo")
    # the same key in another episode is another group; padding is -1
    assert groups.tolist() == [[0, 0, 1], [2, 2, -1]]
    with pytest.raises(ConfigError, match="1 turns have no info\\['turn_group'\\]"):
        T.turn_groups([_traj([0, 0], turn_groups=["r0", None])], 2, algorithm="ospo")


def test_turn_kl_sums_k1_over_each_turns_trained_tokens():
    # tokens: [prompt, t0, t0, obs, t1]; k1 = logp - ref: 0.5, 0.25 (turn 0), 1.0 (turn 1).
    # The second token of turn 0 is not trained (mask 0), so turn 0 gets 0.5 only.
    s = _sample(0, [0, 1, 2], turn_index=[-1, 0, 0, -1, 1], loss_mask=[0, 1, 0, 0, 1])
    logp = torch.tensor([0.0, -1.0, -2.0, 0.0, -0.5])
    ref = torch.tensor([0.0, -1.5, -2.25, 9.0, -1.5])
    kl = T.turn_kl([s], [logp], [ref], 1, 2)
    assert kl.tolist() == [[pytest.approx(0.5), pytest.approx(1.0)]]


def test_whiten_counts_episodes_for_per_episode_advantages():
    # Episodes with advantages +1 (1 turn) and -1 (3 turns): over episodes the mean is 0
    # and they stay symmetric; over turns the mean would be -0.5.
    adv = torch.tensor([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    out = T.whiten(adv, mask, per_episode=True)
    assert out[0, 0].item() == pytest.approx(-out[1, 0].item())
    assert out[1].tolist() == pytest.approx([out[1, 0].item()] * 3)
    assert out[0, 1:].tolist() == [0.0, 0.0]
    # over turns: values 1, -1, -1, -1 -> mean -0.5, sample std 1 -> 1.5 and -0.5
    per_turn = T.whiten(adv, mask, per_episode=False)
    assert per_turn[0, 0].item() == pytest.approx(1.5, abs=1e-6)
    assert per_turn[1].tolist() == pytest.approx([-0.5] * 3, abs=1e-6)


def test_whiten_leaves_a_single_value_alone():
    adv = torch.tensor([[2.0, 0.0]])
    assert torch.equal(T.whiten(adv, torch.tensor([[1.0, 0.0]]), per_episode=False), adv)


def test_pad_rows_and_sample_advantages():
    assert T.pad_rows([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], 3).tolist() == [
        [1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    # episode 1's turns have advantages 5 and 7; its sample's action tokens get them
    turn_adv = torch.tensor([[1.0, 2.0], [5.0, 7.0]])
    s = _sample(1, [0], turn_index=[-1, 0, 0, -1, 1])
    out = T.sample_advantages(turn_adv, [s], torch.tensor([s.turn_index]))
    assert out.tolist() == [[0.0, 5.0, 5.0, 0.0, 7.0]]
