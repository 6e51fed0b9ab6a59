"""Algorithm presets: each names its advantage estimator and the critic it needs.

Presets are leaf variants picked by name from a config (``algorithm.name``); the training
loop is the same for all of them. Their default settings are in
:data:`turnrl.trainer.config.PRESET_DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from turnrl.errors import ConfigError, did_you_mean
from turnrl.trainer.advantages import (
    episode_returns,
    grpo_advantages,
    ospo_advantages,
    rloo_advantages,
    turn_gae,
)

__all__ = ["Algorithm", "get", "PRESETS"]


@dataclass(frozen=True)
class Algorithm:
    name: str
    needs_critic: bool
    #: (rewards, values, turn_mask, terminated, groups, turn_groups, cfg) -> (advantages,
    #: returns), both ``[B, T]``; ``groups`` has one id per episode, ``turn_groups`` one per
    #: turn (``[B, T]``, or None when the envs give none); ``cfg`` is the
    #: :class:`~turnrl.trainer.config.AlgorithmConfig`.
    advantages: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    #: One advantage per episode (the same on all its turns): batch statistics are taken
    #: over episodes, not turns.
    per_episode: bool = False
    #: Needs ``info["turn_group"]`` on every turn.
    needs_turn_groups: bool = False
    description: str = ""


def _gae(*, rewards, values, turn_mask, terminated, groups: Any, turn_groups: Any, cfg: Any):
    return turn_gae(rewards, values, turn_mask, terminated, gamma=cfg.gamma, lam=cfg.lam)


def _per_episode(estimator: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Episode return -> one advantage per episode, put on each of its real turns."""

    def advantages(*, rewards, values, turn_mask, terminated, groups, turn_groups, cfg):
        mask = turn_mask.to(rewards.dtype)
        returns = episode_returns(rewards, turn_mask, cfg.gamma)
        adv = estimator(returns, groups, cfg)
        return adv[:, None] * mask, returns[:, None] * mask

    return advantages


def _one_step(*, rewards, values, turn_mask, terminated, groups, turn_groups, cfg):
    adv = ospo_advantages(rewards, turn_mask, turn_groups, scale_by_std=cfg.group_std)
    return adv, rewards * turn_mask


def _no_advantages(*, rewards, values, turn_mask, terminated, groups, turn_groups, cfg):
    zeros = torch.zeros_like(rewards)
    return zeros, zeros


PRESETS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", True, _gae, description="turn-level PPO: critic + turn-level GAE"),
    "vldac": Algorithm("vldac", True, _gae, description=(
        "VL-DAC: turn-level GAE from a detached value head, token-level PPO (clip 0.1, "
        "ratio guard), k3 KL to the reference")),
    "rloo": Algorithm("rloo", False, _per_episode(lambda r, g, cfg: rloo_advantages(r, g)),
                      per_episode=True, description="REINFORCE leave-one-out over episode groups"),
    "grpo": Algorithm("grpo", False, _per_episode(
        lambda r, g, cfg: grpo_advantages(r, g, scale_by_std=cfg.group_std)),
        per_episode=True, description="group-relative: (R - mean) / std over episode groups"),
    "ospo": Algorithm("ospo", False, _one_step, needs_turn_groups=True, description=(
        "one-step policy optimisation: each decision's reward against the other decisions "
        "of its turn group (e.g. drivers in one dispatch round)")),
    "sft": Algorithm("sft", False, _no_advantages, description="masked NLL on expert episodes only"),
}


def get(name: str) -> Algorithm:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}.{did_you_mean(name, PRESETS)} "
                          f"Available: {', '.join(PRESETS)}") from None
