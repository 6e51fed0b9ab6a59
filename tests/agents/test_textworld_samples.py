"""Sample invariants on real TextWorld rollouts with a tiny model."""

import pytest

pytest.importorskip("torch")

import turnrl  # noqa: E402
from turnrl.agents import tiny  # noqa: E402
from turnrl.agents.hf import HFPolicy  # noqa: E402
from turnrl.rollout import collect  # noqa: E402
from turnrl.trainer.corpus import env_text_corpus  # noqa: E402
from turnrl.trajectory import build_samples  # noqa: E402

KWARGS = {"challenge": "tw-coin_collector", "settings": {"level": 3}, "max_turns": 4}


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    texts = env_text_corpus("turnrl/TextWorld-v0", range(3), **KWARGS)
    path = tiny.make_tiny_model(tmp_path_factory.mktemp("tw_tiny"), texts, vocab_size=500,
                                hidden_size=64, num_layers=2)
    policy = HFPolicy(str(path), max_new_tokens=6, seed=1)
    make = lambda: turnrl.make("turnrl/TextWorld-v0", **KWARGS)  # noqa: E731
    return policy, collect(make, policy, [0, 1, 2], context="full")


def test_textworld_full_samples_decode_to_the_conversation(rollouts):
    policy, trajs = rollouts
    for traj, sample in zip(trajs, build_samples(trajs, "full"), strict=True):
        assert traj.num_turns >= 1
        decoded = policy.tokenizer.decode(sample.input_ids, skip_special_tokens=False)
        assert decoded == policy.renderer.render(traj.messages, add_generation_prompt=True)
        trained = [i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
        assert trained == [i for t in traj.turns for i in t.token_ids]
        # the game's text is never trained on
        obs_ids = {i for t in traj.turns for i in t.obs_token_ids} | set(traj.prompt_token_ids)
        masked = [i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if not m]
        assert set(masked) <= obs_ids
        for t, pos in zip(sample.value_turns, sample.value_positions, strict=True):
            if t < traj.num_turns:
                assert sample.turn_index[pos + 1] == t and sample.turn_index[pos] == -1


def test_textworld_window_samples(rollouts):
    policy, trajs = rollouts
    samples = build_samples(trajs, "window(1)")
    assert len(samples) == sum(t.num_turns for t in trajs)
    for s in samples:
        assert sum(s.loss_mask) == len(trajs[s.trajectory].turns[s.value_turns[0]].token_ids)
