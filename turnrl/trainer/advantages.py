"""Advantage estimators: pure functions over tensors with explicit masks.

Shapes: ``B`` trajectories, ``T`` turns (padded to the longest), ``S`` tokens.
Rewards live on turns, never on tokens; :func:`spread_to_tokens` gives every action
token of turn ``t`` the advantage ``A_t``.
"""

from __future__ import annotations

import torch

__all__ = [
    "turn_gae", "episode_returns", "returns_to_go", "rloo_advantages", "grpo_advantages",
    "ospo_advantages", "turn_group_advantages", "gigpo_advantages", "spread_to_tokens",
    "masked_mean", "TIE_TOLERANCE",
]


def turn_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    turn_mask: torch.Tensor,
    terminated: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn-level generalised advantage estimation.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - terminated_t) - V_t`` and
    ``A_t = delta_t + gamma * lam * A_{t+1}``, where ``terminated_t`` is true only on the
    last turn of a trajectory that ended by termination. A trajectory cut by a time or
    context limit (truncated) bootstraps from ``V_L``, the value of its final observation.

    Args:
        rewards: ``[B, T]`` reward of each turn (0 on padding).
        values: ``[B, T + 1]``; ``values[b, t]`` = V(s_t) for ``t < L_b`` and
            ``values[b, L_b]`` = V of the observation after the last action.
        turn_mask: ``[B, T]`` 1 on real turns (a prefix of each row).
        terminated: ``[B]`` bool, the trajectory ended by termination (not truncation).
        gamma: discount per turn.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 on padding; returns = A + V.
    """
    if values.shape[1] != rewards.shape[1] + 1:
        raise ValueError(f"values must be [B, T+1]; got {tuple(values.shape)} for rewards "
                         f"{tuple(rewards.shape)}")
    batch, turns = rewards.shape
    mask = turn_mask.to(rewards.dtype)
    padded = torch.cat([mask, mask.new_zeros(batch, 1)], dim=1)
    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(batch)
    for t in reversed(range(turns)):
        is_last = (padded[:, t] > 0) & (padded[:, t + 1] == 0)
        cut = (is_last & terminated.bool()).to(rewards.dtype)  # no value after termination
        delta = rewards[:, t] + gamma * values[:, t + 1] * (1.0 - cut) - values[:, t]
        running = delta + gamma * lam * running * (1.0 - is_last.to(rewards.dtype))
        running = running * mask[:, t]
        advantages[:, t] = running
    returns = (advantages + values[:, :turns]) * mask
    return advantages, returns


def episode_returns(rewards: torch.Tensor, turn_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``R_i = sum_t gamma^t r_{i,t}`` over the real turns of each episode: ``[B, T] -> [B]``."""
    discount = gamma ** torch.arange(rewards.shape[1], dtype=rewards.dtype)
    return (rewards * turn_mask.to(rewards.dtype) * discount).sum(dim=1)


def returns_to_go(rewards: torch.Tensor, turn_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over the real turns of each episode (no bootstrap
    after the last one): ``[B, T] -> [B, T]``, 0 on padding."""
    mask = turn_mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


#: Returns (or rewards) of a group that differ by at most this, relative to the largest
#: of them (at least 1), are one tie: the group carries no signal and gets advantage 0.
#: Float32 sums of equal rewards in different orders differ by a few ulps (~1e-7).
TIE_TOLERANCE = 1e-6


def _tied(values: torch.Tensor) -> bool:
    spread = float(values.max() - values.min())
    return spread <= TIE_TOLERANCE * max(1.0, float(values.abs().max()))


def _relative(values: torch.Tensor, *, scale_by_std: bool, eps: float) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` (or only centred) in float64; exactly 0 for a tie."""
    if _tied(values):
        return torch.zeros_like(values)
    x = values.double()
    centred = x - x.mean()
    return (centred / (x.std() + eps) if scale_by_std else centred).to(values.dtype)


def _group_members(groups: list[int] | torch.Tensor, n: int, need: int) -> list[torch.Tensor]:
    ids = torch.as_tensor(groups)
    if ids.shape != (n,):
        raise ValueError(f"groups must give one group id per episode ({n}), got shape "
                         f"{tuple(ids.shape)}")
    members = [torch.nonzero(ids == g).squeeze(1) for g in torch.unique(ids)]
    small = [int(ids[m[0]]) for m in members if len(m) < need]
    if small:
        raise ValueError(f"groups {small} have fewer than {need} episodes; group-relative "
                         f"advantages need rollout.group_size >= {need}")
    return members


def rloo_advantages(returns: torch.Tensor, groups: list[int] | torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_i = R_i - mean_{j != i, j in group(i)} R_j``.

    One number per episode: its return against the mean of the other episodes of its
    group (same env and seed). Every episode counts once, however many turns it has.
    Computed in float64; a group whose returns tie (:data:`TIE_TOLERANCE`) gets exactly 0.

    Args:
        returns: ``[B]`` episode returns.
        groups: ``[B]`` group id of each episode; every group needs >= 2 episodes.

    Returns:
        ``[B]`` advantages.
    """
    out = torch.zeros_like(returns)
    for idx in _group_members(groups, returns.shape[0], need=2):
        r = returns[idx]
        if not _tied(r):
            x = r.double()
            out[idx] = (x - (x.sum() - x) / (len(idx) - 1)).to(returns.dtype)
    return out


def grpo_advantages(
    returns: torch.Tensor, groups: list[int] | torch.Tensor, *, scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages: ``(R_i - mean_g) / (std_g + eps)``.

    ``std_g`` is the sample standard deviation (n - 1) of the group's returns; with
    ``scale_by_std=False`` only the mean is subtracted (Dr. GRPO), so groups whose
    returns barely differ are not blown up. Statistics are taken in float64, and a group
    whose returns tie (equal up to :data:`TIE_TOLERANCE`) gets exactly 0.

    Args:
        returns: ``[B]`` episode returns.
        groups: ``[B]`` group id of each episode; every group needs >= 2 episodes.

    Returns:
        ``[B]`` advantages.
    """
    out = torch.zeros_like(returns)
    for idx in _group_members(groups, returns.shape[0], need=2):
        out[idx] = _relative(returns[idx], scale_by_std=scale_by_std, eps=eps)
    return out


def ospo_advantages(
    rewards: torch.Tensor, turn_mask: torch.Tensor, turn_groups: torch.Tensor, *,
    scale_by_std: bool = True, eps: float = 1e-6,
) -> torch.Tensor:
    """One-step, group-relative advantages (OSPO): each turn's own reward against the
    other turns of its group, ``(r - mean_g) / (std_g + eps)``.

    A group is a set of decisions taken in the same situation by different agents, e.g.
    the drivers deciding in one dispatch round of one episode. Unlike GRPO, nothing is
    replayed (no G rollouts of one seed) and no return is summed: the reward of the
    decision itself is compared with its peers'. A group of one, or one whose rewards tie
    (:data:`TIE_TOLERANCE`), gets 0; statistics are taken in float64.

    Args:
        rewards: ``[B, T]`` turn rewards.
        turn_mask: ``[B, T]`` 1 on real turns.
        turn_groups: ``[B, T]`` integer group id of each turn (any value on padding).
        scale_by_std: divide by the group's sample standard deviation.

    Returns:
        ``[B, T]`` advantages, 0 on padding.
    """
    return turn_group_advantages(rewards, turn_mask, turn_groups, scale_by_std=scale_by_std,
                                 eps=eps)


def turn_group_advantages(
    values: torch.Tensor, turn_mask: torch.Tensor, turn_groups: torch.Tensor, *,
    scale_by_std: bool = True, eps: float = 1e-6,
) -> torch.Tensor:
    """Each turn's value against the other turns of its group: ``(x - mean_g) / (std_g +
    eps)``, or only centred. Every turn counts once; a group of one, or one whose values tie
    (:data:`TIE_TOLERANCE`), gets 0; statistics are taken in float64.

    Args:
        values: ``[B, T]`` a number per turn (a reward, a return-to-go).
        turn_mask: ``[B, T]`` 1 on real turns.
        turn_groups: ``[B, T]`` integer group id of each turn (any value on padding).

    Returns:
        ``[B, T]`` advantages, 0 on padding.
    """
    out = torch.zeros_like(values)
    real = turn_mask > 0
    for g in torch.unique(turn_groups[real]):
        members = real & (turn_groups == g)
        r = values[members]
        if r.numel() < 2:
            continue
        out[members] = _relative(r, scale_by_std=scale_by_std, eps=eps)
    return out


def gigpo_advantages(
    returns: torch.Tensor, step_returns: torch.Tensor, turn_mask: torch.Tensor,
    groups: list[int] | torch.Tensor, anchors: torch.Tensor, *, step_weight: float = 1.0,
    scale_by_std: bool = False, eps: float = 1e-6,
) -> torch.Tensor:
    """Group-in-group advantages (GiGPO, Feng et al. 2025):
    ``A_{i,t} = A^E_i + step_weight * A^S_{i,t}``.

    ``A^E_i`` is the episode's advantage within its group (:func:`grpo_advantages` of
    ``returns``: ``R_i - mean_g``, divided by ``std_g + eps`` with ``scale_by_std``).
    ``A^S_{i,t}`` compares turn ``t``'s return-to-go with those of the other turns taken
    from the same env state (the same ``anchors`` id) in the episodes of the same group --
    an anchor-state group, across episodes and within one (a state visited twice adds two
    turns): ``G_{i,t} - mean_a``, divided by ``std_a + eps`` with ``scale_by_std``. A turn
    alone in its anchor group, or one whose group's returns tie, gets ``A^S = 0``.
    Statistics are over episodes (``A^E``) and over turns (``A^S``), sample standard
    deviations (n - 1), in float64. (The paper's Eq. 3 takes ``A^E``'s over the group's
    episodes, as here; verl-agent's code takes them over the group's turns by default, so
    that long episodes weigh more in the baseline.)

    Args:
        returns: ``[B]`` episode returns ``R_i``.
        step_returns: ``[B, T]`` each turn's return-to-go ``G_{i,t}`` (:func:`returns_to_go`).
        turn_mask: ``[B, T]`` 1 on real turns.
        groups: ``[B]`` group id of each episode; every group needs >= 2 episodes.
        anchors: ``[B, T]`` integer id of the state each turn acted on (equal ids: the same
            state); only compared within a group. Any value on padding.
        step_weight: ``omega``; 0 leaves the episode advantage alone (GRPO).
        scale_by_std: divide both parts by their group's standard deviation.

    Returns:
        ``[B, T]`` advantages, 0 on padding.
    """
    mask = turn_mask.to(step_returns.dtype)
    episode = grpo_advantages(returns, groups, scale_by_std=scale_by_std, eps=eps)
    out = episode[:, None] * mask
    if step_weight:
        group_of = torch.as_tensor(groups, dtype=torch.long)[:, None].expand_as(anchors)
        pairs = torch.stack([group_of, anchors.long()], dim=-1)  # (group, state) per turn
        _, ids = torch.unique(pairs.reshape(-1, 2), dim=0, return_inverse=True)
        step = turn_group_advantages(step_returns, turn_mask, ids.reshape(anchors.shape),
                                     scale_by_std=scale_by_std, eps=eps)
        out = out + step_weight * step
    return out


def spread_to_tokens(turn_values: torch.Tensor, turn_index: torch.Tensor) -> torch.Tensor:
    """Per-token copy of per-turn values.

    Args:
        turn_values: ``[B, T]``.
        turn_index: ``[B, S]`` turn of each token, -1 outside actions.

    Returns:
        ``[B, S]``: ``turn_values[b, turn_index[b, s]]``, and 0 where ``turn_index`` is -1.
    """
    index = turn_index.clamp(min=0).long()
    out = torch.gather(turn_values, 1, index)
    return out * (turn_index >= 0).to(out.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 if there are none).

    Masked-out positions are selected away, not multiplied by 0, so an inf or NaN there
    (e.g. a huge ratio on a padding token) cannot leak into the result.
    """
    keep = mask > 0
    x = torch.where(keep, x, torch.zeros_like(x))
    mask = keep.to(x.dtype)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1.0)
    return x.sum(dim) / mask.sum(dim).clamp(min=1.0)
