"""TextWorld environments: generated games of TextWorld's four challenges, or your own
z-machine games. See :mod:`turnrl.envs.textworld.env` (the environment) and
:mod:`turnrl.envs.textworld.generation` (settings, cache, generation failures).

Importing this package does not import TextWorld; the environment module does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from turnrl.envs.textworld.generation import (
    CHALLENGES,
    DEFAULT_SETTINGS,
    GameCache,
    GeneratedGame,
    default_cache_dir,
    normalize_settings,
    pregenerate,
)

if TYPE_CHECKING:
    from turnrl.envs.textworld.env import TextWorldEnv

__all__ = [
    "TextWorldEnv", "CHALLENGES", "DEFAULT_SETTINGS", "GameCache", "GeneratedGame",
    "default_cache_dir", "normalize_settings", "pregenerate",
]


def __getattr__(name: str) -> Any:
    if name == "TextWorldEnv":
        from turnrl.envs.textworld.env import TextWorldEnv

        return TextWorldEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
