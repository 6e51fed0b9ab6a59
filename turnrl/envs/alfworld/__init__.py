"""ALFWorld on ALFWorld's own text engine: ``turnrl/ALFWorld-v0``.

- :mod:`~turnrl.envs.alfworld.env` -- :class:`ALFWorldEnv`, the Gymnasium env.
- :mod:`~turnrl.envs.alfworld.engine` -- TextWorld's ``PddlEnv`` with ALFWorld's demangler,
  kept warm across resets; the put/move grammar bridge.
- :mod:`~turnrl.envs.alfworld.expert` -- ALFWorld's hand-coded expert, fixed and seeded.
- :mod:`~turnrl.envs.alfworld.generator` -- solvable households from (seed, task type, split).
- :mod:`~turnrl.envs.alfworld.games` -- generated games (verified, cached) and the official
  ``json_2.1.1`` games.

Importing this package imports no engine; the env needs ``pip install 'turnrl[alfworld]'``.
"""

from turnrl.envs.alfworld.tasks import SPLITS, TASK_TYPES

__all__ = ["TASK_TYPES", "SPLITS", "ALFWorldEnv"]


def __getattr__(name: str):  # lazy: the engine loads only when the env is used
    if name == "ALFWorldEnv":
        from turnrl.envs.alfworld.env import ALFWorldEnv

        return ALFWorldEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
