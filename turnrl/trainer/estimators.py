"""Advantage estimators as the algorithm table calls them, and the advantages step.

An estimator takes a :class:`~turnrl.trainer.turns.TurnBatch` and the plain keyword
arguments its row names in ``params`` and returns ``(advantages, returns)``, both
``[N, T]``. The math itself lives in :mod:`turnrl.trainer.advantages`; these functions
only pick its inputs. :func:`compute_advantages` is the trainer's advantages step: turn
tensors, optional KL in the reward, the row's estimator, optional whitening.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from turnrl.trainer import turns as T
from turnrl.trainer.advantages import (
    episode_returns,
    gigpo_advantages,
    grpo_advantages,
    ospo_advantages,
    returns_to_go,
    rloo_advantages,
    turn_gae,
)
from turnrl.trainer.algorithms import Algorithm
from turnrl.trajectory import Sample, Trajectory

__all__ = ["gae", "rloo", "grpo", "gigpo", "ospo", "TurnAdvantages", "compute_advantages"]


def gae(turns: T.TurnBatch, *, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn-level GAE from the critic's values (``ppo``, ``vldac``)."""
    return turn_gae(turns.rewards, turns.values, turns.turn_mask, turns.terminated,
                    gamma=gamma, lam=lam)


def _on_every_turn(per_episode: torch.Tensor, returns: torch.Tensor, turn_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N]`` advantages and returns put on each real turn of their episode."""
    mask = turn_mask.to(returns.dtype)
    return per_episode[:, None] * mask, returns[:, None] * mask


def rloo(turns: T.TurnBatch, *, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out on each episode's discounted return."""
    returns = episode_returns(turns.rewards, turns.turn_mask, gamma)
    return _on_every_turn(rloo_advantages(returns, turns.groups), returns, turns.turn_mask)


def grpo(turns: T.TurnBatch, *, gamma: float, group_std: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantage of each episode's discounted return."""
    returns = episode_returns(turns.rewards, turns.turn_mask, gamma)
    adv = grpo_advantages(returns, turns.groups, scale_by_std=group_std)
    return _on_every_turn(adv, returns, turns.turn_mask)


def gigpo(turns: T.TurnBatch, *, gamma: float, group_std: bool, step_adv_weight: float,
          step_gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GiGPO: each episode's (``gamma``-discounted) return against its group, plus
    ``step_adv_weight`` x each turn's ``step_gamma``-discounted return-to-go against the
    group's other turns from the same env state; the returns are the returns-to-go."""
    returns = episode_returns(turns.rewards, turns.turn_mask, gamma)
    to_go = returns_to_go(turns.rewards, turns.turn_mask, step_gamma)
    adv = gigpo_advantages(returns, to_go, turns.turn_mask, turns.groups, turns.anchors,
                           step_weight=step_adv_weight, scale_by_std=group_std)
    return adv, to_go


def ospo(turns: T.TurnBatch, *, group_std: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each turn's own reward against the other turns of its turn group."""
    adv = ospo_advantages(turns.rewards, turns.turn_mask, turns.turn_groups,
                          scale_by_std=group_std)
    return adv, turns.rewards * turns.turn_mask


@dataclass
class TurnAdvantages:
    """The advantages step's result.

    Attributes:
        advantages: ``[N, T]``, 0 on padding.
        returns: ``[N, T]`` value targets (GAE: A + V).
        values: ``[N, T + 1]`` the critic's V(s_t) the advantages were computed from.
        turn_mask: ``[N, T]`` 1 on real turns.
        num_turns: turns of each episode.
    """

    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    turn_mask: torch.Tensor
    num_turns: list[int]


def compute_advantages(
    algorithm: Algorithm,
    trajectories: Sequence[Trajectory],
    samples: Sequence[Sample],
    sample_values: Sequence[torch.Tensor],
    params: dict[str, Any],
    *,
    normalize: bool,
    kl_coef: float = 0.0,
    logprobs: Sequence[torch.Tensor] | None = None,
    ref_logprobs: Sequence[torch.Tensor] | None = None,
) -> TurnAdvantages:
    """Per-turn advantages of a rollout batch.

    Args:
        algorithm: the table row whose estimator runs.
        trajectories: the batch's episodes; ``samples`` were built from them.
        sample_values: ``[K_i]`` critic values each sample read (zeros without a critic).
        params: the keyword arguments the row's ``params`` name, as plain values.
        normalize: whiten the advantages over the batch (over episodes for
            ``per_episode`` rows).
        kl_coef: with ``ref_logprobs``, subtract ``kl_coef`` x the k1 KL of each turn's
            tokens (``logprobs`` vs ``ref_logprobs``, ``[S_i]`` per sample) from its reward.
    """
    rewards, turn_mask, terminated = T.episode_tensors(trajectories)
    n, t_max = turn_mask.shape
    values = T.turn_values(samples, sample_values, n, t_max)
    if ref_logprobs is not None:
        rewards = rewards - kl_coef * T.turn_kl(samples, logprobs, ref_logprobs, n, t_max)
    batch = T.TurnBatch(
        rewards=rewards, values=values, turn_mask=turn_mask, terminated=terminated,
        groups=T.group_ids(trajectories),
        turn_groups=(T.turn_groups(trajectories, t_max, algorithm=algorithm.name)
                     if "turn_groups" in algorithm.needs else None),
        anchors=(T.anchor_ids(trajectories, t_max, algorithm=algorithm.name)
                 if "state_keys" in algorithm.needs else None),
    )
    adv, returns = algorithm.estimator_fn()(batch, **params)
    if normalize:
        adv = T.whiten(adv, turn_mask, per_episode=algorithm.per_episode)
    return TurnAdvantages(adv * turn_mask, returns, values, turn_mask,
                          [t.num_turns for t in trajectories])
