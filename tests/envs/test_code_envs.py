"""turnrl/CodeInterpreter-v0 and turnrl/CodeRepair-v0 on real reasoning-gym, real
HumanEval and a real bubblewrap sandbox."""

from __future__ import annotations

import pytest
from gymnasium.utils.env_checker import check_env

import turnrl
from turnrl.agents import make_agent
from turnrl.agents.scripted_code import ScriptedCodeAgent
from turnrl.errors import ConfigError
from turnrl.evaluate import evaluate
from turnrl.rollout import collect

FUZZ = ["", " \t\n ", "x" * 100_000, "日本語で考える 🤖 <<<", "\x00\x01\x1b[31mred\x7f```", "\r\n```\r\n",
        "```python\n\n```", "```python\n" + "\x00" * 10 + "\n```"]
IDS = ["CodeInterpreter", "CodeRepair"]


def make(env_id: str, sandbox, **kwargs):
    return turnrl.make(f"turnrl/{env_id}-v0", sandbox=sandbox, **kwargs)


@pytest.mark.parametrize("env_id", IDS)
def test_check_env(env_id, sandbox):
    env = make(env_id, sandbox)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_episode(env_id, sandbox):
    a, b = make(env_id, sandbox), make(env_id, sandbox)
    try:
        for seed in (0, 7, 100_003):
            obs_a, info_a = a.reset(seed=seed)
            obs_b, info_b = b.reset(seed=seed)
            assert obs_a == obs_b and info_a["task_name"] == info_b["task_name"]
            reply = "```python\nprint(1 + 1)\n```"
            assert a.step(reply)[:4] == b.step(reply)[:4]
        tasks = {a.reset(seed=s)[1]["task_name"] for s in range(40)}
        assert len(tasks) > 3  # the seed picks the task
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("reply", FUZZ, ids=["empty", "ws", "100KB", "unicode", "control", "crlf",
                                             "empty-block", "nul-block"])
def test_fuzzed_replies_never_raise(env_id, reply, sandbox):
    env = make(env_id, sandbox)
    try:
        env.reset(seed=1)
        obs, reward, terminated, truncated, info = env.step(reply)
        assert env.observation_space.contains(obs) and obs
        assert isinstance(reward, float)
    finally:
        env.close()


# ------------------------------------------------------------------ CodeInterpreter
def test_tool_observations_carry_the_tool_role(sandbox):
    """An episode collected with turnrl.rollout.collect: code output is a tool message
    (masked in training), everything the env says otherwise is a user message."""
    trajs = collect(lambda: make("CodeInterpreter", sandbox, tasks=["gcd", "lcm"]),
                    ScriptedCodeAgent(), [100_000, 100_001])
    for traj in trajs:
        roles = [m["role"] for m in traj.messages]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
        tool = traj.messages[3]["content"]
        assert tool.startswith("Code Execution Results:\n")
        assert traj.turns[0].info["obs_role"] == "tool" and traj.won


def test_state_persists_and_output_is_truncated(sandbox):
    env = make("CodeInterpreter", sandbox, tasks=["gcd"], max_tool_output_chars=50)
    try:
        env.reset(seed=0)
        env.step("```python\nx = 20\n```")
        obs, *_ = env.step("Now:\n```python\nprint(x * 2)\n```")
        assert obs == "Code Execution Results:\n40"
        obs, *_ = env.step("```python\nprint('a' * 500)\n```")
        assert "truncated" in obs and len(obs) < 200
        # A new episode starts with a clean interpreter.
        env.reset(seed=1)
        obs, *_ = env.step("```python\nprint('x' in globals())\n```")
        assert obs.endswith("False")
    finally:
        env.close()


def test_code_errors_and_timeouts_come_back_as_observations(sandbox):
    env = make("CodeInterpreter", sandbox, tasks=["gcd"], code_timeout_s=1.0)
    try:
        env.reset(seed=0)
        obs, _, _, _, info = env.step("```python\n1/0\n```")
        assert "ZeroDivisionError" in obs and info["exec_status"] == "runtime_error"
        obs, _, _, _, info = env.step("```python\nimport time\ntime.sleep(5)\n```")
        assert "time limit" in obs and info["exec_status"] == "timeout"
    finally:
        env.close()


def test_code_call_cap_and_turn_budget(sandbox):
    env = make("CodeInterpreter", sandbox, tasks=["gcd"], max_code_calls=2, invalid_penalty=-0.1)
    try:
        env.reset(seed=0)
        env.step("```python\nprint(1)\n```")
        obs, *_ = env.step("```python\nprint(2)\n```")
        assert "last code call" in obs
        obs, reward, terminated, truncated, info = env.step("```python\nprint(3)\n```")
        assert info["invalid_action"] and reward == pytest.approx(-0.1) and "not run" in obs
        assert env.unwrapped.max_turns == 5  # default: max_code_calls + 3
        assert env.step("still thinking")[2:4] == (False, False)
        _, _, terminated, truncated, _ = env.step("still thinking")
        assert (terminated, truncated) == (False, True)  # out of turns: truncated
    finally:
        env.close()


def test_answer_before_code_ends_the_turn_and_is_scored(sandbox):
    env = make("CodeInterpreter", sandbox, tasks=["gcd"])
    try:
        _, info = env.reset(seed=3)
        right = info["expert_action"]
        _, reward, terminated, _, info = env.step(f"I know it: {right}\n```python\nprint(1)\n```")
        assert (reward, terminated, info["won"]) == (1.0, True, True)
        env.reset(seed=3)
        _, reward, terminated, _, info = env.step("<<<definitely wrong>>>")
        assert terminated and not info["won"] and reward < 1.0
    finally:
        env.close()


def test_unclosed_block_runs_to_the_end(sandbox):
    env = make("CodeInterpreter", sandbox, tasks=["gcd"])
    try:
        env.reset(seed=0)
        obs, *_ = env.step("Compute:\n```python\nprint(6 * 7)")
        assert obs == "Code Execution Results:\n42"
    finally:
        env.close()


def test_custom_answer_tags(sandbox):
    env = make("CodeInterpreter", sandbox, tasks=["gcd"], answer_open="<answer>",
               answer_close="</answer>")
    try:
        _, info = env.reset(seed=0)
        assert info["expert_action"].startswith("<answer>") and "<answer>" in env.unwrapped.instructions
        assert env.step(info["expert_action"])[4]["won"]
    finally:
        env.close()


def test_bad_config_names_value_and_choices(sandbox):
    with pytest.raises(ConfigError, match=r"'puzzle42'.*Did you mean 'puzzle24'.*Available:"):
        make("CodeInterpreter", sandbox, tasks=["puzzle42"])
    with pytest.raises(ConfigError, match="not among tasks"):
        make("CodeInterpreter", sandbox, tasks=["gcd"], task_configs={"lcm": {}})
    with pytest.raises(ConfigError, match="rejected the config"):
        make("CodeInterpreter", sandbox, tasks=["gcd"], task_configs={"gcd": {"bogus": 1}})
    with pytest.raises(ConfigError, match="max_code_calls"):
        make("CodeInterpreter", sandbox, max_code_calls=-1)
    with pytest.raises(ConfigError, match=r"HumanEval/0'\.\.'HumanEval/163"):
        make("CodeRepair", sandbox, problems=[500])
    with pytest.raises(ConfigError, match="unknown sandbox backend"):
        turnrl.make("turnrl/CodeRepair-v0", sandbox="dokcer")


def test_scripted_agent_solves_tasks_by_code(sandbox):
    results = evaluate("turnrl/CodeInterpreter-v0", make_agent("scripted_code"), episodes=12,
                       seed=100_000, num_envs=2, env_kwargs={"sandbox": sandbox})
    assert results[0].success_rate >= 0.9
    codes = [t for t in results[0].trajectories if any(m["role"] == "tool" for m in t.messages)]
    assert len(codes) == 12  # every episode went through the code tool


# ------------------------------------------------------------------ CodeRepair
def test_repair_loop_feedback_then_fix(sandbox):
    env = make("CodeRepair", sandbox, problems=["HumanEval/0"])
    try:
        obs, info = env.reset(seed=0)
        assert "def has_close_elements" in obs and info["task_name"] == "HumanEval/0"
        wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"
        obs, reward, terminated, _, info = env.step(wrong)
        assert obs.startswith("Test Results:\n4 of 7 tests passed.")
        assert "FAILED: assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False" in obs
        assert "got: True" in obs and info["obs_role"] == "tool"
        assert (reward, terminated, info["won"]) == (0.0, False, False)
        obs, reward, terminated, _, info = env.step(info["expert_action"])
        assert obs == "Test Results:\nAll 7 tests passed." and (reward, terminated) == (1.0, True)
    finally:
        env.close()


@pytest.mark.parametrize("hack", [
    "import os\nos._exit(0)",
    "import sys\nsys.exit(0)",
    "print('{\"passed\": 7, \"failed\": [], \"load_error\": null, \"error\": null}')\n"
    "def has_close_elements(n, t):\n    return True",
    "def has_close_elements(n, t):\n    while True:\n        pass",
])
def test_repair_verdict_cannot_be_faked(hack, sandbox):
    env = make("CodeRepair", sandbox, problems=[0], test_timeout_s=2.0)
    try:
        env.reset(seed=0)
        _, reward, terminated, _, info = env.step(f"```python\n{hack}\n```")
        assert (reward, terminated, info["won"]) == (0.0, False, False)
    finally:
        env.close()


def test_repair_body_only_completion_and_partial_credit(sandbox):
    env = make("CodeRepair", sandbox, problems=[0], partial_credit=True)
    try:
        env.reset(seed=0)
        _, reward, *_ = env.step("```python\n    return True\n```")  # completes the stub
        assert reward == pytest.approx(4 / 7)
    finally:
        env.close()


@pytest.mark.slow
def test_expert_passes_every_humaneval_problem(sandbox):
    results = evaluate("turnrl/CodeRepair-v0", make_agent("expert"), episodes=164, seed=0,
                       num_envs=2, env_kwargs={"sandbox": sandbox})
    assert results[0].success_rate == 1.0
