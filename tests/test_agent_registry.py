"""Agents by name: the registry behind make_agent and `turnrl eval --agent`."""

import os
import subprocess
import sys

import pytest

from turnrl import agent_registry
from turnrl.agent_registry import agent_spec, list_agents, make_agent, register_agent
from turnrl.agents import ExpertAgent, RandomAgent, ScriptedCodeAgent
from turnrl.envs.ride_dispatch.policies import DispatchAgent
from turnrl.envs.stock.baselines import StockAgent
from turnrl.errors import ConfigError, DuplicateEnvError
from turnrl.trajectory import Action


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are dropped afterwards."""
    saved = dict(agent_registry._REGISTRY)
    yield
    agent_registry._REGISTRY.clear()
    agent_registry._REGISTRY.update(saved)


class Echo:
    """Replies with the last message."""

    def __init__(self, prefix: str = "", seed: int | None = None) -> None:
        self.prefix, self.seed = prefix, seed

    def act(self, conversations, infos=None):
        return [Action(text=self.prefix + c[-1]["content"]) for c in conversations]


def test_builtin_and_env_baselines_are_registered():
    usages = {a.usage for a in list_agents()}
    assert {"random", "expert", "scripted_code", "hf:MODEL", "openai:MODEL", "dispatch_random",
            "dispatch_greedy", "dispatch_matching", "stock_majority", "stock_lexicon"} <= usages
    assert [a.name for a in list_agents()] == sorted(a.name for a in list_agents())
    assert all(a.description for a in list_agents())


@pytest.mark.parametrize("spec, cls, name", [
    ("random", RandomAgent, "random"),
    ("expert", ExpertAgent, "expert"),
    ("scripted_code", ScriptedCodeAgent, None),
    ("dispatch_random", DispatchAgent, "dispatch_random"),
    ("dispatch_greedy", DispatchAgent, "dispatch_greedy"),
    ("dispatch_matching", DispatchAgent, "dispatch_matching"),
    ("stock_majority", StockAgent, "stock_majority"),
    ("stock_lexicon", StockAgent, "stock_lexicon"),
])
def test_model_free_agents_by_name(spec, cls, name):
    agent = make_agent(spec)
    assert type(agent) is cls
    if name is not None:
        assert agent.name == name  # the family member the name promises


def test_seed_reaches_the_same_agents_as_before():
    # `turnrl eval --seed` seeded exactly these before the registry; keep it so.
    seeded = {"random", "dispatch_random", "hf", "openai"}
    for spec in list_agents():
        assert spec.takes_seed() == (spec.name in seeded), spec.name
    a, b = make_agent("dispatch_random", seed=3), make_agent("dispatch_random", seed=3)
    assert a.rng.integers(1 << 30) == b.rng.integers(1 << 30)


def test_turnrl_agents_reexports_the_registry():
    import turnrl.agents as agents

    assert agents.make_agent is make_agent
    assert agents.register_agent is register_agent and agents.list_agents is list_agents


def test_unknown_agent_suggests_and_lists():
    with pytest.raises(ConfigError, match="Did you mean 'expert'") as err:
        make_agent("expret")
    for usage in ("random", "hf:MODEL", "openai:MODEL", "dispatch_greedy", "stock_lexicon"):
        assert usage in str(err.value)
    with pytest.raises(ConfigError, match="unknown agent 'nope:x'"):
        agent_spec("nope:x")


@pytest.mark.parametrize("spec", ["hf:", "openai:"])
def test_empty_argument_names_the_metavar(spec):
    with pytest.raises(ConfigError, match=rf"model is empty; write {spec}MODEL"):
        make_agent(spec)


def test_argument_to_an_agent_that_takes_none():
    with pytest.raises(ConfigError, match="'random' takes no argument, got 'random:3'"):
        make_agent("random:3")


def test_bad_keywords_are_named():
    with pytest.raises(ConfigError, match="does not accept 'seed'.*Accepted keywords: fallback"):
        make_agent("expert", seed=0)
    with pytest.raises(ConfigError, match="sets policy='greedy' itself"):
        make_agent("dispatch_greedy", policy="random")


def test_register_lazy_string_with_argument_and_fixed_kwargs(scratch_registry):
    register_agent("echo", f"{__name__}:Echo", description="echoes", argument=("prefix", "PREFIX"))
    register_agent("echo_hi", Echo, description="echoes with hi", kwargs={"prefix": "hi "})
    agent = make_agent("echo:>> ", seed=4)
    assert isinstance(agent, Echo) and (agent.prefix, agent.seed) == (">> ", 4)
    assert make_agent("echo_hi").act([[{"role": "user", "content": "x"}]])[0].text == "hi x"
    assert agent_spec("echo:anything").usage == "echo:PREFIX"
    assert agent_spec("echo").seeded is None and agent_spec("echo").takes_seed()  # from the signature


def test_seeded_is_read_from_the_signature_when_unset(scratch_registry):
    register_agent("plain", ExpertAgent, description="no seed")
    register_agent("kw", lambda **kwargs: Echo(**kwargs), description="takes anything")
    assert not agent_spec("plain").takes_seed()
    assert agent_spec("kw").takes_seed()


def test_duplicate_and_malformed_registrations(scratch_registry):
    with pytest.raises(DuplicateEnvError, match="'random' is already registered"):
        register_agent("random", Echo, description="x")
    register_agent("random", Echo, description="replaced", override=True)
    assert isinstance(make_agent("random"), Echo)
    with pytest.raises(ConfigError, match="agent name must start with a letter"):
        register_agent("hf:x", Echo, description="x")
    with pytest.raises(ConfigError, match="entry_point must be 'module:attr'"):
        register_agent("bad", "no_colon_here", description="x")
    with pytest.raises(ConfigError, match=r"\(keyword, metavar\) pair"):
        register_agent("bad", Echo, description="x", argument=("model",))
    with pytest.raises(ConfigError, match="both fixed in kwargs and taken from the spec"):
        register_agent("bad", Echo, description="x", argument=("prefix", "P"), kwargs={"prefix": ""})


def test_missing_attribute_of_a_lazy_entry_point_is_named(scratch_registry):
    register_agent("ghost", "turnrl.agents.baselines:NoSuchAgent", description="x")
    with pytest.raises(ImportError, match="has no attribute 'NoSuchAgent'"):
        make_agent("ghost")


def test_listing_agents_imports_no_backend():
    code = (
        "import sys, turnrl\n"
        "from turnrl.agent_registry import list_agents, agent_spec\n"
        "assert len(list_agents()) >= 10 and agent_spec('hf:x').takes_seed()\n"
        "bad = [m for m in ('torch', 'transformers', 'turnrl.agents.hf', 'turnrl.agents.openai',\n"
        "                   'turnrl.envs.ride_dispatch.policies') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _plugin(tmp_path, name: str, value: str) -> dict:
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[turnrl.agents]\n{name} = {value}\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_plugin_agents_load_through_the_entry_point_group(tmp_path):
    (tmp_path / "my_agents.py").write_text(
        "from turnrl.agent_registry import register_agent\n"
        "def register_all():\n"
        "    register_agent('plug', 'turnrl.agents.baselines:RandomAgent', description='plugged')\n"
    )
    env = _plugin(tmp_path, "myagents", "my_agents:register_all")
    code = ("from turnrl.agents import make_agent, list_agents\n"
            "assert 'plug' in [a.name for a in list_agents()]\n"
            "print(type(make_agent('plug', seed=0)).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "RandomAgent"


def test_broken_agent_plugin_warns_and_the_rest_works(tmp_path):
    env = _plugin(tmp_path, "brokenagents", "no_such_module_xyz:register")
    code = "from turnrl.agents import make_agent; print(type(make_agent('expert')).__name__)"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ExpertAgent"
    assert "brokenagents" in out.stderr and "no_such_module_xyz" in out.stderr


def test_hf_agent_decodes_greedily_with_the_old_defaults(tiny_guess_model):
    pytest.importorskip("torch")
    from turnrl.agents.hf import HFPolicy

    policy = make_agent(f"hf:{tiny_guess_model}", seed=0)
    assert isinstance(policy, HFPolicy)
    assert policy.greedy is True and policy.max_new_tokens == 64
    assert make_agent(f"hf:{tiny_guess_model}", max_new_tokens=8).max_new_tokens == 8


def test_eval_help_lists_every_registered_agent(scratch_registry):
    from turnrl.cli import build_parser

    register_agent("echo", Echo, description="echoes 100% of the time")
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    help_text = next(a.help for a in eval_parser._actions if a.dest == "agent") % {}
    for spec in list_agents():
        assert f"{spec.usage} ({spec.description})" in help_text
    eval_parser.format_help()  # a '%' in a description does not break argparse
