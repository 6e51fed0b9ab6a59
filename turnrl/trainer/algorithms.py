"""Algorithm presets: each names its advantage estimator and whether it needs a critic.

Presets are leaf variants picked by name from a config (``algorithm.name``); the training
loop is the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from turnrl.errors import ConfigError, did_you_mean
from turnrl.trainer.advantages import turn_gae

__all__ = ["Algorithm", "get", "PRESETS"]


@dataclass(frozen=True)
class Algorithm:
    name: str
    needs_critic: bool
    #: (rewards, values, turn_mask, terminated, groups, gamma, lam) -> (advantages, returns)
    advantages: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    description: str = ""


def _gae(*, rewards, values, turn_mask, terminated, groups: Any, gamma: float, lam: float):
    return turn_gae(rewards, values, turn_mask, terminated, gamma=gamma, lam=lam)


def _no_advantages(*, rewards, values, turn_mask, terminated, groups, gamma, lam):
    zeros = torch.zeros_like(rewards)
    return zeros, zeros


PRESETS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", True, _gae, "turn-level PPO: critic + turn-level GAE"),
    "sft": Algorithm("sft", False, _no_advantages, "masked NLL on expert episodes only"),
}


def get(name: str) -> Algorithm:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}.{did_you_mean(name, PRESETS)} "
                          f"Available: {', '.join(PRESETS)}") from None
