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
