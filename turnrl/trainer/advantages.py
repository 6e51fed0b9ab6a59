"""Advantage estimators: pure functions over tensors with explicit masks.

Shapes: ``B`` trajectories, ``T`` turns (padded to the longest), ``S`` tokens.
Rewards live on turns, never on tokens; :func:`spread_to_tokens` gives every action
token of turn ``t`` the advantage ``A_t``.
"""

from __future__ import annotations

import torch

__all__ = ["turn_gae", "spread_to_tokens", "masked_mean", "masked_whiten", "ESTIMATORS"]


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


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over masked positions; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


#: Estimators selectable by name in a config (``algorithm.advantage``).
ESTIMATORS = {"gae": turn_gae}
