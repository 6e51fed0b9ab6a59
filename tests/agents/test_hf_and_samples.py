"""Token-exact rollouts with a real (tiny) transformers model: samples decode to the
rendered conversation, the trained tokens are exactly the sampled ones, value positions
sit just before each action, and no step re-renders the history."""

import pytest

pytest.importorskip("torch")

from toy_envs import GuessNumber  # noqa: E402

from turnrl.agents.hf import HFPolicy  # noqa: E402
from turnrl.rollout import collect  # noqa: E402
from turnrl.trajectory import build_samples, parse_context  # noqa: E402


@pytest.fixture(scope="module")
def policy(tiny_guess_model):
    return HFPolicy(str(tiny_guess_model), max_new_tokens=6, seed=0)


@pytest.fixture(scope="module")
def trajs(policy):
    return collect(lambda: GuessNumber(max_turns=4), policy, list(range(6)), num_envs=4)


def test_policy_returns_ids_logprobs_and_text(policy):
    actions = policy.generate([[5, 6, 7], [8, 9]])
    for a in actions:
        assert 1 <= len(a.token_ids) <= 6 and len(a.logprobs) == len(a.token_ids)
        assert all(lp <= 0 for lp in a.logprobs)
        assert a.text == policy.renderer.action_text(a.token_ids)


def test_left_padding_does_not_change_the_reply(policy):
    """Greedy replies to a prompt are the same alone and next to a longer prompt."""
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]
    alone = policy.generate([short], greedy=True)[0]
    batched = policy.generate([long, short], greedy=True)[1]
    assert alone.token_ids == batched.token_ids
    assert alone.logprobs == pytest.approx(batched.logprobs, abs=1e-4)


def test_sampling_is_seeded(tiny_guess_model):
    a = HFPolicy(str(tiny_guess_model), max_new_tokens=6, seed=3).generate([[5, 6]] * 4)
    b = HFPolicy(str(tiny_guess_model), max_new_tokens=6, seed=3).generate([[5, 6]] * 4)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


def test_full_sample_decodes_to_rendered_conversation(policy, trajs):
    tok, renderer = policy.tokenizer, policy.renderer
    for traj, sample in zip(trajs, build_samples(trajs, "full"), strict=True):
        text = tok.decode(sample.input_ids, skip_special_tokens=False)
        assert text == renderer.render(traj.messages, add_generation_prompt=True)
        trained = [i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
        assert trained == [i for t in traj.turns for i in t.token_ids]
        # trained tokens carry their turn; everything else is -1
        for m, turn in zip(sample.loss_mask, sample.turn_index, strict=True):
            assert (turn >= 0) == bool(m)
        # V(s_t) is read on the last token before turn t's action
        for t, pos in zip(sample.value_turns, sample.value_positions, strict=True):
            if t < traj.num_turns:
                assert sample.turn_index[pos] != t and sample.turn_index[pos + 1] == t
            else:
                assert pos == len(sample) - 1
        assert sample.rollout_logprobs[sample.loss_mask.index(1)] == traj.turns[0].logprobs[0]


def test_window_samples_are_what_the_policy_saw(policy, trajs):
    renderer = policy.renderer
    mode = parse_context("window(1)")
    for traj in trajs:
        samples = build_samples([traj], mode)
        assert len(samples) == traj.num_turns
        for t, s in enumerate(samples):
            msgs = traj.messages[:2] + traj.messages[2 + 2 * max(0, t - mode.k): 2 + 2 * (t + 1)]
            decoded = policy.tokenizer.decode(s.input_ids, skip_special_tokens=False)
            assert decoded == renderer.render(msgs, add_generation_prompt=True)
            assert set(s.turn_index) - {-1} == {t}
            assert s.value_turns == [t, t + 1]


def test_window_rollout_prompts_are_bounded(tiny_guess_model):
    policy = HFPolicy(str(tiny_guess_model), max_new_tokens=6, seed=0)
    seen = []
    original = policy.generate

    def spy(prompts, **kw):
        seen.extend(len(p) for p in prompts)
        return original(prompts, **kw)

    policy.generate = spy
    collect(lambda: GuessNumber(max_turns=8), policy, [0, 1], context="window(1)")
    # prompt + one exchange: never the whole history
    assert max(seen) <= min(seen) + 2 * (6 + 40)


def test_rendering_cost_per_turn_is_constant(tiny_guess_model):
    """The chat template only ever renders a fixed short conversation, however long the
    episode: no whole-history re-rendering or re-tokenization."""
    policy = HFPolicy(str(tiny_guess_model), max_new_tokens=4, seed=0)
    tok = policy.tokenizer
    lengths = []
    original = tok.apply_chat_template

    def spy(messages, *args, **kwargs):
        lengths.append(len(messages))
        return original(messages, *args, **kwargs)

    tok.apply_chat_template = spy
    trajs = collect(lambda: GuessNumber(max_turns=12, invalid_penalty=0.0), policy, [0, 1])
    assert sum(t.num_turns for t in trajs) > 12
    assert max(lengths) <= 4


def test_context_limit_truncates_episode(tiny_guess_model):
    policy = HFPolicy(str(tiny_guess_model), max_new_tokens=6, seed=0)
    trajs = collect(lambda: GuessNumber(max_turns=50), policy, [0], max_context_tokens=160)
    traj = trajs[0]
    if not traj.won:
        assert traj.truncated and not traj.terminated and traj.num_turns < 50


def test_samples_need_token_ids():
    from turnrl.agents import ExpertAgent

    trajs = collect(lambda: GuessNumber(), ExpertAgent(), [0])
    with pytest.raises(ValueError, match="token"):
        build_samples(trajs)


@pytest.mark.parametrize("bad", ["window", "window(-1)", "last(2)", "window(x)"])
def test_bad_context(bad):
    with pytest.raises(ValueError, match="window"):
        parse_context(bad)
