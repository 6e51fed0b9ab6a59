"""Every registered environment keeps the contract: check_env, determinism, fuzzing."""

import copy

import pytest
from gymnasium.utils.env_checker import check_env

import turnrl

ENV_IDS = [s.id for s in turnrl.list_envs() if s.id.startswith("turnrl/") and
           not isinstance(s.entry_point, type)]  # built-ins, not test-registered classes
FUZZ = ["", "   \n\t  ", "y" * 100_000, "😀 ünïcödé ✓ 你好", "\x00\x07\x1b[2J\x7f", "Action:"]


@pytest.fixture(params=ENV_IDS)
def env_id(request):
    return request.param


def test_check_env(env_id):
    env = turnrl.make(env_id)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_same_seed_same_episode(env_id):
    """Two envs reset with one seed give identical observations; the same replies give
    identical transitions."""
    runs = []
    for _ in range(2):
        env = turnrl.make(env_id)
        obs, info = env.reset(seed=7)
        record = [obs, info.get("task")]
        for _ in range(3):
            reply = info.get("expert_action") or (info.get("admissible_actions") or ["look"])[0]
            obs, reward, terminated, truncated, info = env.step(reply)
            record.append((obs, reward, terminated, truncated))
            if terminated or truncated:
                break
        runs.append(record)
        env.close()
    assert runs[0] == runs[1]


def test_fuzzed_replies_never_raise(env_id):
    env = turnrl.make(env_id)
    try:
        env.reset(seed=3)
        for reply in FUZZ:
            obs, reward, terminated, truncated, info = env.step(reply)
            assert isinstance(obs, str) and obs
            assert info["invalid_action"] is True, (reply[:20], obs)
            assert env.observation_space.contains(obs)
            if terminated or truncated:
                env.reset(seed=3)
    finally:
        env.close()


def test_standard_info_keys(env_id):
    env = turnrl.make(env_id)
    try:
        obs, info = env.reset(seed=1)
        assert isinstance(info["task"], str) and info["task"]
        for key in ("won", "invalid_action", "obs_role", "metrics", "turn"):
            assert key in info
        before = copy.deepcopy(info)
        env.step("")
        assert info == before  # infos are never mutated after they are returned
        assert isinstance(env.unwrapped.instructions, str) and env.unwrapped.instructions
    finally:
        env.close()
