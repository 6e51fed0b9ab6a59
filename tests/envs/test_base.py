"""The TextEnv contract, checked on a tiny env with no engine behind it."""

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from toy_envs import GuessNumber

from turnrl.envs.base import TEXT_CHARSET, sanitize_text

FUZZ = ["", " \t\n ", "x" * 100_000, "日本語で考える 🤖", "\x00\x01\x1b[31mred\x7f", "\r\n\r\n"]


def test_check_env_passes():
    check_env(GuessNumber(), skip_render_check=True)


def test_charset_has_spaces_and_newlines():
    assert " " in TEXT_CHARSET and "\n" in TEXT_CHARSET
    assert GuessNumber().observation_space.contains("Find the number, please.\nNow!")


def test_expert_wins_and_terminates():
    env = GuessNumber()
    obs, info = env.reset(seed=4)
    assert info["task"] and info["won"] is False and info["turn"] == 0
    obs, reward, terminated, truncated, info = env.step(info["expert_action"])
    assert (reward, terminated, truncated, info["won"]) == (1.0, True, False, True)
    with pytest.raises(ResetNeeded):
        env.step("guess 1")


def test_turn_budget_truncates_not_terminates():
    env = GuessNumber(max_turns=2)
    _, info = env.reset(seed=0)  # target 1
    env.step("guess 5")
    _, _, terminated, truncated, info = env.step("guess 6")
    assert (terminated, truncated, info["turn"]) == (False, True, 2)


@pytest.mark.parametrize("reply", FUZZ, ids=["empty", "whitespace", "100KB", "unicode", "control", "crlf"])
def test_fuzzed_replies_get_feedback_not_exceptions(reply):
    env = GuessNumber(max_turns=50)
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(reply)
    assert info["invalid_action"] is True
    assert reward == pytest.approx(-0.1)  # the env's invalid_penalty
    assert not terminated
    assert env.observation_space.contains(obs)
    assert obs  # feedback, not silence
    # the state did not change: admissible actions and expert carry over
    assert info["expert_action"] == "guess 2"


def test_unknown_command_is_invalid_but_reaches_world():
    env = GuessNumber()
    env.reset(seed=1)
    obs, reward, *_, info = env.step("guess 99")
    assert info["invalid_action"] and "not a guess" in obs and reward == pytest.approx(-0.1)


def test_non_string_action_is_a_type_error():
    env = GuessNumber()
    env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        env.step(3)


def test_long_observations_are_cut_in_the_middle():
    env = GuessNumber()
    env.max_obs_chars = 300
    text = "a" * 200 + "b" * 500 + "c" * 200
    clipped = env._clip(text)
    assert len(clipped) <= 300 and clipped.startswith("a") and clipped.endswith("c")
    assert "characters cut" in clipped


def test_sanitize_replaces_out_of_charset():
    assert sanitize_text("ok") == "ok"
    assert sanitize_text("a🤖b") == "a\ufffdb"


def test_render_ansi():
    env = GuessNumber(render_mode="ansi")
    env.reset(seed=0)
    env.step("guess 3")
    assert env.render() == "> guess 3\nNo, go lower."


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_max_turns(bad):
    with pytest.raises(ValueError, match="max_turns"):
        GuessNumber(max_turns=bad)


def test_gymnasium_make_runs_our_env():
    import turnrl

    turnrl.register("turnrl/GuessNumberGym-v0", GuessNumber, override=True)
    env = gym.make("turnrl/GuessNumberGym-v0", high=5)
    obs, info = env.reset(seed=2)
    assert "between 1 and 5" in obs


def test_instructions_replace_the_system_prompt_and_are_checked():
    import turnrl

    default = turnrl.make("turnrl/TextWorld-v0").unwrapped.instructions
    assert default  # the class's prompt
    assert turnrl.make("turnrl/TextWorld-v0", instructions="").unwrapped.instructions == ""
    assert turnrl.make("turnrl/TextWorld-v0", instructions="Be brief.").unwrapped.instructions == "Be brief."
    assert type(turnrl.make("turnrl/TextWorld-v0").unwrapped).instructions == default  # class untouched
    with pytest.raises(ValueError, match="instructions must be a string or None, got 3"):
        turnrl.make("turnrl/TextWorld-v0", instructions=3)
