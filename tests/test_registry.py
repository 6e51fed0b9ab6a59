import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from toy_envs import GuessNumber

import turnrl
from turnrl.errors import ConfigError, DuplicateEnvError, InvalidEnvIdError, UnknownEnvError


def test_builtin_ids_registered_with_gymnasium():
    ids = [s.id for s in turnrl.list_envs()]
    assert "turnrl/TextWorld-v0" in ids
    for env_id in ids:
        assert env_id in gym.registry


def test_register_and_make_with_defaults_and_overrides():
    turnrl.register("turnrl/GuessA-v0", GuessNumber, high=4, override=True)
    env = turnrl.make("turnrl/GuessA-v0")
    assert env.high == 4 and env.spec.id == "turnrl/GuessA-v0"
    assert turnrl.make("turnrl/GuessA-v0", high=7).high == 7


def test_decorator_registration_and_lazy_string_entry_point():
    @turnrl.register("turnrl/GuessDeco-v0", max_turns=3, override=True)
    class Deco(GuessNumber):
        """A decorated env."""

    assert turnrl.make("turnrl/GuessDeco-v0").max_turns == 3
    assert turnrl.spec("turnrl/GuessDeco-v0").description == "A decorated env."
    turnrl.register("turnrl/GuessLazy-v0", "toy_envs:GuessNumber", override=True)
    assert isinstance(turnrl.make("turnrl/GuessLazy-v0"), GuessNumber)


def test_duplicate_id_is_an_error_naming_the_next_version():
    turnrl.register("turnrl/GuessDup-v0", GuessNumber, override=True)
    with pytest.raises(DuplicateEnvError, match=r"turnrl/GuessDup-v1"):
        turnrl.register("turnrl/GuessDup-v0", GuessNumber)


@pytest.mark.parametrize("bad", ["TextWorld", "turnrl/TextWorld", "turnrl/Text World-v0", "/X-v0", 3])
def test_bad_ids_rejected(bad):
    with pytest.raises(InvalidEnvIdError, match="turnrl/<Name>-v<N>"):
        turnrl.register(bad, GuessNumber)


def test_unknown_id_suggests_close_matches():
    with pytest.raises(UnknownEnvError) as exc:
        turnrl.make("turnrl/TextWorld-v1")
    assert "'turnrl/TextWorld-v0'" in str(exc.value)
    with pytest.raises(UnknownEnvError, match="TextWorld-v0"):
        turnrl.make("textworld-v0")


def test_unknown_kwarg_lists_accepted_ones():
    turnrl.register("turnrl/GuessKw-v0", GuessNumber, override=True)
    with pytest.raises(ConfigError) as exc:
        turnrl.make("turnrl/GuessKw-v0", hihg=3)
    assert "'hihg'" in str(exc.value) and "high" in str(exc.value)


def test_entry_point_plugin_registers_at_import(tmp_path):
    """A package that declares the `turnrl.envs` entry point is found at `import turnrl`,
    and its env works through both turnrl.make and gymnasium.make."""
    plugin_dir = Path(__file__).parent / "plugin_pkg"
    code = (
        "import gymnasium as gym, turnrl\n"
        "assert 'turnrl/PluginCounter-v0' in [s.id for s in turnrl.list_envs()]\n"
        "env = gym.make('turnrl/PluginCounter-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "for _ in range(3): obs, r, term, trunc, info = env.step('count')\n"
        "assert term and info['won'], (term, info)\n"
        "print('plugin ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plugin ok" in out.stdout


def test_broken_plugin_warns_and_others_still_load(tmp_path):
    pkg = tmp_path / "brokenplugin-0.1.dist-info"
    pkg.mkdir()
    (pkg / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 0.1\n")
    (pkg / "entry_points.txt").write_text("[turnrl.envs]\nbroken = no_such_module_xyz:register\n")
    code = "import turnrl; print(len(turnrl.list_envs()))"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "broken" in out.stderr and "no_such_module_xyz" in out.stderr


def test_core_needs_no_torch():
    """Envs and evaluation of non-torch agents never import torch or transformers."""
    code = (
        "import sys, turnrl\n"
        "from turnrl.agents import RandomAgent\n"
        "turnrl.evaluate('turnrl/TextWorld-v0', RandomAgent(seed=0), episodes=1,\n"
        "                env_kwargs={'challenge': 'tw-coin_collector', 'settings': {'level': 1}})\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ})
    assert out.returncode == 0, out.stderr
