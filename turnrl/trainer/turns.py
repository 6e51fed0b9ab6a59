"""Per-turn tensors of a rollout batch: pure functions from trajectories and samples.

Shapes: ``N`` episodes, ``T`` turns (padded to the longest episode), ``S`` tokens, ``K``
value reads per sample. Rewards live on turns; these functions lay them out as ``[N, T]``
tensors for the advantage estimators and spread per-turn results back to tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from turnrl.errors import ConfigError
from turnrl.trainer.advantages import TIE_TOLERANCE, spread_to_tokens
from turnrl.trainer.losses import kl_penalty
from turnrl.trajectory import Sample, Trajectory

__all__ = [
    "TurnBatch", "episode_tensors", "turn_values", "group_ids", "turn_groups", "anchor_ids",
    "turn_kl", "whiten", "pad_rows", "sample_advantages",
]


@dataclass
class TurnBatch:
    """What an advantage estimator reads.

    Attributes:
        rewards: ``[N, T]`` reward of each turn (0 on padding).
        values: ``[N, T + 1]`` V(s_t) for real turns, V of the final observation at
            ``t = L`` (bootstrap), 0 elsewhere (all 0 without a critic).
        turn_mask: ``[N, T]`` 1 on real turns (a prefix of each row).
        terminated: ``[N]`` bool: the episode ended by termination, not a limit.
        groups: one integer per episode, shared by the episodes of one (entry, seed) group.
        turn_groups: ``[N, T]`` group id of each turn (``info["turn_group"]``), -1 where
            absent; None unless the algorithm asks for it.
        anchors: ``[N, T]`` id of the env state each turn acted on (``Turn.state_key``;
            equal ids: the same state), -1 on padding; None unless the algorithm asks for it.
    """

    rewards: torch.Tensor
    values: torch.Tensor
    turn_mask: torch.Tensor
    terminated: torch.Tensor
    groups: list[int]
    turn_groups: torch.Tensor | None = None
    anchors: torch.Tensor | None = None


def episode_tensors(trajectories: Sequence[Trajectory]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rewards [N, T], turn_mask [N, T], terminated [N])``; ``T`` is at least 1.

    A failed episode is not ``terminated`` (its end says nothing about the task).
    """
    n = len(trajectories)
    t_max = max(1, max((t.num_turns for t in trajectories), default=0))
    rewards = torch.zeros(n, t_max)
    turn_mask = torch.zeros(n, t_max)
    terminated = torch.zeros(n, dtype=torch.bool)
    for i, traj in enumerate(trajectories):
        k = traj.num_turns
        rewards[i, :k] = torch.tensor(traj.rewards)
        turn_mask[i, :k] = 1.0
        terminated[i] = traj.terminated and not traj.failed
    return rewards, turn_mask, terminated


def turn_values(samples: Sequence[Sample], sample_values: Sequence[torch.Tensor], n: int,
                t_max: int) -> torch.Tensor:
    """``[N, T + 1]`` state values from the samples' value reads.

    Args:
        samples: the batch's samples.
        sample_values: ``[K_i]`` values each sample read at its ``value_positions``.

    A turn read by several samples (``window`` contexts read V(s_t) in turn t's sample
    and, as its bootstrap, in turn t-1's) takes the read of its own sample: the first read
    of a sample is its own turn; V(s_L) comes from the last sample.
    """
    values = torch.zeros(n, t_max + 1)
    filled = torch.zeros(n, t_max + 1, dtype=torch.bool)
    for s, v in zip(samples, sample_values, strict=True):
        for j, (turn, value) in enumerate(zip(s.value_turns, v.tolist(), strict=True)):
            if j == 0 or not filled[s.trajectory, turn]:
                values[s.trajectory, turn] = value
                filled[s.trajectory, turn] = True
    return values


def group_ids(trajectories: Sequence[Trajectory]) -> list[int]:
    """One integer per episode, shared by the episodes of one (suite entry, seed) group;
    ungrouped episodes (``group is None``) each get their own."""
    ids: dict[Any, int] = {}
    out = []
    for i, traj in enumerate(trajectories):
        key = (traj.entry, traj.group) if traj.group is not None else ("", -1 - i)
        out.append(ids.setdefault(key, len(ids)))
    return out


def turn_groups(trajectories: Sequence[Trajectory], t_max: int, *, algorithm: str) -> torch.Tensor:
    """``[N, T]`` group id of each turn: the (episode, ``info["turn_group"]``) pairs
    numbered, -1 on padding.

    Raises:
        ConfigError: a turn has no ``info["turn_group"]`` (``algorithm`` needs them all).
    """
    ids: dict[Any, int] = {}
    out = torch.full((len(trajectories), t_max), -1, dtype=torch.long)
    missing = 0
    for i, traj in enumerate(trajectories):
        for t, turn in enumerate(traj.turns):
            key = turn.info.get("turn_group")
            if key is None:
                missing += 1
                continue
            out[i, t] = ids.setdefault((i, key), len(ids))
    if missing:
        raise ConfigError(
            f"algorithm {algorithm} compares the decisions of a turn group, but {missing} "
            "turns have no info['turn_group']; use an env that sets it (e.g. "
            "turnrl/RideDispatchDriver-v0: the drivers of one round)")
    return out


def anchor_ids(trajectories: Sequence[Trajectory], t_max: int, *, algorithm: str) -> torch.Tensor:
    """``[N, T]`` id of the env state each turn acted on: the batch's distinct
    ``Turn.state_key`` values numbered, -1 on padding. Equal keys get equal ids in any
    episode (an estimator compares them within a group only).

    Raises:
        ConfigError: a turn has no ``state_key`` (episodes not recorded by turnrl's rollout,
            e.g. loaded from an older JSONL).
    """
    ids: dict[str, int] = {}
    out = torch.full((len(trajectories), t_max), -1, dtype=torch.long)
    missing = 0
    for i, traj in enumerate(trajectories):
        for t, turn in enumerate(traj.turns):
            if turn.state_key is None:
                missing += 1
                continue
            out[i, t] = ids.setdefault(turn.state_key, len(ids))
    if missing:
        raise ConfigError(
            f"algorithm {algorithm} groups turns by the env state they acted on, but "
            f"{missing} turns have no state_key; play the episodes with turnrl's rollout, "
            "which records it (info['state_key'], else the observation's text)")
    return out


def turn_kl(samples: Sequence[Sample], logprobs: Sequence[torch.Tensor],
            ref_logprobs: Sequence[torch.Tensor], n: int, t_max: int) -> torch.Tensor:
    """``[N, T]``: k1 KL to the reference summed over each turn's action tokens (for
    ``kl_in: reward``); ``logprobs``/``ref_logprobs`` are ``[S_i]`` per sample."""
    kl = torch.zeros(n, t_max)
    for s, old, ref in zip(samples, logprobs, ref_logprobs, strict=True):
        per_token = kl_penalty(old, ref, "k1")
        for pos, turn in enumerate(s.turn_index):
            if turn >= 0 and s.loss_mask[pos]:
                kl[s.trajectory, turn] += float(per_token[pos])
    return kl


def whiten(adv: torch.Tensor, turn_mask: torch.Tensor, *, per_episode: bool) -> torch.Tensor:
    """Normalise ``[N, T]`` advantages to mean 0, std 1 over the batch: over real turns, or
    over episodes when each episode has one advantage (then long episodes do not weigh
    more). Padding is left as it is. A batch without variance (fewer than 2 values, or
    values equal up to :data:`~turnrl.trainer.advantages.TIE_TOLERANCE`) is returned
    unchanged: dividing float noise by a std of ~0 would invent a signal."""
    real = turn_mask > 0
    values = adv[:, 0][real[:, 0]] if per_episode else adv[real]
    if values.numel() < 2:
        return adv
    spread = float(values.max() - values.min())
    if spread <= TIE_TOLERANCE * max(1.0, float(values.abs().max())):
        return adv
    out = (adv - values.mean()) / (values.std() + 1e-8)
    return torch.where(real, out, adv)


def pad_rows(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """``[len(rows), width]``: each 1-D row on the left, zeros after it."""
    out = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def sample_advantages(turn_adv: torch.Tensor, samples: Sequence[Sample],
                      turn_index: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` advantage of every token of a batch of ``samples``: its turn's advantage
    on action tokens, 0 elsewhere.

    Args:
        turn_adv: ``[N, T]`` per-turn advantages of the whole rollout batch.
        turn_index: ``[B, S]`` the batch's turn of each token (-1 outside actions).
    """
    rows = torch.tensor([s.trajectory for s in samples])
    return spread_to_tokens(turn_adv[rows], turn_index)
