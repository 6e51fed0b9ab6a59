"""turnrl: train and evaluate LLM agents with RL on multi-turn text and code environments.

Quick start::

    import turnrl
    env = turnrl.make("turnrl/TextWorld-v0", challenge="tw-coin_collector")
    obs, info = env.reset(seed=0)
    results = turnrl.evaluate("textworld", turnrl.agents.ExpertAgent(), episodes=5)
"""

from __future__ import annotations

from turnrl.envs import (
    EnvSpec,
    InvalidAction,
    Suite,
    SuiteEntry,
    TextEnv,
    get_suite,
    list_envs,
    list_suites,
    load_plugins,
    make,
    register,
    register_suite,
    spec,
)
from turnrl.errors import (
    ConfigError,
    DuplicateEnvError,
    GameGenerationError,
    TurnRLError,
    UnknownEnvError,
    UnsupportedSettingsError,
)
from turnrl.evaluate import EnvResult, evaluate
from turnrl.trajectory import Trajectory, Turn

__version__ = "0.1.0"

__all__ = [
    "EnvSpec", "InvalidAction", "Suite", "SuiteEntry", "TextEnv", "get_suite", "list_envs",
    "list_suites", "load_plugins", "make", "register", "register_suite", "spec",
    "ConfigError", "DuplicateEnvError", "GameGenerationError", "TurnRLError",
    "UnknownEnvError", "UnsupportedSettingsError", "EnvResult", "evaluate", "Trajectory",
    "Turn", "__version__",
]

# Third-party environments (entry-point group "turnrl.envs") are registered at import so
# that gymnasium.make("<their id>") works after `import turnrl`.
load_plugins()
