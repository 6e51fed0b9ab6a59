"""``info["state_key"]`` of TextWorld and ALFWorld, on the real engines: the same key exactly
when the world is in the same state, whatever the observation says (GiGPO's anchor states).
"""

from __future__ import annotations

from typing import Any

import pytest

import turnrl


def _step(env: Any, command: str) -> tuple[str, dict[str, Any]]:
    obs, _, terminated, truncated, info = env.step(command)
    assert not (terminated or truncated), command
    return obs, info


# ------------------------------------------------------------------------- TextWorld
@pytest.fixture(scope="module")
def textworld_env(cache_dir):
    pytest.importorskip("textworld")
    from turnrl.envs.textworld.env import TextWorldEnv

    env = TextWorldEnv(challenge="tw-simple", max_turns=50)
    yield env
    env.close()


def test_textworld_same_state_same_key(textworld_env):
    env = textworld_env
    obs0, info = env.reset(seed=1)
    start = info["state_key"]
    # looking, taking stock and an unparsable reply change nothing in the world; each
    # answers with other text
    for command in ("look", "inventory", "go north. go south"):
        obs, info = _step(env, command)
        assert obs != obs0 and info["state_key"] == start, command
    # opening a container the goal does not need, then closing it: another state (no
    # points scored), then the start again -- described by another observation
    container = next(a.removeprefix("open ") for a in info["admissible_actions"]
                     if a.startswith("open ") and a != info["expert_action"])
    _, opened = _step(env, f"open {container}")
    assert opened["state_key"] != start and opened["metrics"]["score"] == 0
    obs, closed = _step(env, f"close {container}")
    assert closed["state_key"] == start and obs != obs0
    # replaying the episode gives the same keys; another game, other keys
    _, again = env.reset(seed=1)
    assert again["state_key"] == start
    _, other = env.reset(seed=2)
    assert other["state_key"] != start


def test_textworld_key_follows_objects_and_score(textworld_env):
    env = textworld_env
    _, info = env.reset(seed=1)
    keys = {info["state_key"]}
    # the expert's plan changes the world at every step (opening, taking, moving, scoring):
    # every state along it is new
    while info.get("expert_action"):
        obs, _, terminated, _, info = env.step(info["expert_action"])
        assert info["state_key"] not in keys, obs
        keys.add(info["state_key"])
        if terminated:
            break


# ------------------------------------------------------------------------- ALFWorld
@pytest.fixture(scope="module")
def alfworld_env(cache_dir):
    pytest.importorskip("alfworld")
    env = turnrl.make("turnrl/ALFWorld-v0", max_turns=50)
    yield env
    env.close()


def test_alfworld_same_state_same_key(alfworld_env):
    env = alfworld_env
    obs0, info = env.reset(seed=0)
    start = info["state_key"]
    places = [a for a in info["admissible_actions"] if a.startswith("go to ")]
    # looking around records what was seen in the engine (checked), not in the world
    for command in ("look", "inventory", "not a command at all"):
        obs, info = _step(env, command)
        assert obs != obs0 and info["state_key"] == start, command
    # where the agent stands is state, not the way it came: A then B equals B directly
    _, info = _step(env, places[0])
    assert info["state_key"] != start
    _, via_a = _step(env, places[1])
    env.reset(seed=0)
    _, direct = _step(env, places[1])
    assert direct["state_key"] == via_a["state_key"] != start


def test_alfworld_open_then_close_is_the_same_state(alfworld_env):
    env = alfworld_env
    _, info = env.reset(seed=0)
    for place in (a for a in info["admissible_actions"] if a.startswith("go to ")):
        obs, there = _step(env, place)
        target = place.removeprefix("go to ")
        if f"open {target}" in there["admissible_actions"]:
            break
    else:
        pytest.fail("no openable receptacle in this room")
    _, opened = _step(env, f"open {target}")
    assert opened["state_key"] != there["state_key"]
    _, closed = _step(env, f"close {target}")
    assert closed["state_key"] == there["state_key"]
    # taking an object changes the state (where it is, what the agent holds)
    _, info = _step(env, f"open {target}")
    take = next((a for a in info["admissible_actions"] if a.startswith("take ")), None)
    if take is not None:
        _, held = _step(env, take)
        assert held["state_key"] not in (opened["state_key"], there["state_key"])
