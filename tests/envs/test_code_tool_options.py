"""CodeInterpreter-v0's options for learning the tool: ``max_code_calls=0`` (no tool),
``expert_code`` (an oracle that demonstrates the tool) and the ``answer_from_tool`` metric."""

from __future__ import annotations

import json
import re

import pytest

import turnrl
from turnrl.agents import make_agent
from turnrl.errors import ConfigError
from turnrl.rollout import collect

PRODUCTS = {"tasks": ["products"], "task_configs": {"products": {"min_digits": 4, "max_digits": 4}}}


def make(sandbox, **kwargs):
    return turnrl.make("turnrl/CodeInterpreter-v0", sandbox=sandbox, **{**PRODUCTS, **kwargs})


@pytest.mark.parametrize("tasks", [["products"], ["chain_sum"]])
def test_expert_code_demonstrates_the_tool_and_wins(tasks, sandbox):
    env = make(sandbox, tasks=tasks, task_configs={}, max_code_calls=1, expert_code=True)
    try:
        for seed in (0, 5, 100_001):
            obs, info = env.reset(seed=seed)
            expression = re.search(r"\d+(?: [-+*] \d+)+", obs).group(0)  # as the task writes it
            assert info["expert_action"] == f"```python\nprint({expression})\n```"
            obs, reward, terminated, _, info = env.step(info["expert_action"])
            assert info["obs_role"] == "tool" and not terminated and reward == 0.0
            printed = obs.splitlines()[1]
            assert info["expert_action"] == f"<<<{printed}>>>"
            _, reward, terminated, _, info = env.step(info["expert_action"])
            assert terminated and info["won"] and reward == 1.0
            assert info["metrics"]["code_calls"] == 1.0 and info["metrics"]["answer_from_tool"] == 1.0
    finally:
        env.close()


def test_expert_code_in_the_tool_call_format(sandbox):
    env = make(sandbox, max_code_calls=1, expert_code=True, tool_format="tool_call")
    try:
        obs, info = env.reset(seed=2)
        call = info["expert_action"]
        assert call.startswith("<tool_call>\n") and call.endswith("\n</tool_call>")
        assert json.loads(call.split("\n")[1])["arguments"]["code"].startswith("print(")
        _, _, _, _, info = env.step(call)
        assert env.step(info["expert_action"])[4]["won"]
    finally:
        env.close()


def test_expert_agent_collects_tool_demonstrations(sandbox):
    """The expert (what SFT data collection plays) goes through the tool on every episode;
    code output comes back as tool messages."""
    trajs = collect(lambda: make(sandbox, max_code_calls=1, max_turns=3, expert_code=True),
                    make_agent("expert"), [0, 1, 2])
    for traj in trajs:
        roles = [m["role"] for m in traj.messages[1:]]  # the last: the verdict on the answer
        assert traj.won and roles == ["user", "assistant", "tool", "assistant", "user"]


def test_answer_from_tool_is_zero_for_an_answer_from_nowhere(sandbox):
    env = make(sandbox, max_code_calls=1)
    try:
        _, info = env.reset(seed=3)
        env.step("```python\nprint(6 * 7)\n```")
        _, _, _, _, info = env.step("<<<41>>>")  # not what the code printed
        assert info["metrics"]["answer_from_tool"] == 0.0 and not info["won"]
        _, info = env.reset(seed=3)
        _, reward, _, _, info = env.step(info["expert_action"])  # right, but without the tool
        assert reward == 1.0 and info["metrics"] == {"code_calls": 0.0, "score": 1.0,
                                                     "answer_from_tool": 0.0}
    finally:
        env.close()


def test_without_the_tool_code_is_refused_and_instructions_say_so(sandbox):
    env = make(sandbox, max_code_calls=0, max_turns=2, invalid_penalty=-0.1)
    try:
        assert "no code interpreter" in env.unwrapped.instructions
        assert "```python" not in env.unwrapped.instructions
        obs, info = env.reset(seed=0)
        assert "Python" not in obs and info["expert_action"].startswith("<<<")
        obs, reward, terminated, _, info = env.step("```python\nprint(1)\n```")
        assert info["invalid_action"] and reward == pytest.approx(-0.1) and not terminated
        assert "no code interpreter" in obs
        assert env.step(info["expert_action"])[4]["won"]
    finally:
        env.close()


def test_expert_code_config_errors(sandbox):
    with pytest.raises(ConfigError, match="max_code_calls >= 1"):
        make(sandbox, max_code_calls=0, expert_code=True)
    with pytest.raises(ConfigError, match=r"\['gcd'\] do not"):
        make(sandbox, tasks=["products", "gcd"], task_configs={}, expert_code=True)
    with pytest.raises(ConfigError, match="true or false"):
        make(sandbox, expert_code="yes")
