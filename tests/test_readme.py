"""The README's registration example runs as written."""

import re
from pathlib import Path

import turnrl

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_register_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    block = next(b for b in blocks if "@turnrl.register" in b)
    scope: dict = {}
    turnrl.envs.registry._REGISTRY.pop("turnrl/Guess-v0", None)
    exec(compile(block, "README.md", "exec"), scope)
    env = scope["env"]
    obs, info = env.reset(seed=4)  # target 5
    assert info["task"]
    obs, r, term, trunc, info = env.step("guess 5")
    assert (obs, r, term, info["won"]) == ("Correct!", 1.0, True, True)
    env.reset(seed=4)
    obs, *_, info = env.step("no idea")
    assert info["invalid_action"] and "guess N" in obs
