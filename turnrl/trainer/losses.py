"""Losses: pure functions over ``[B, S]`` token tensors with explicit masks.

Every function takes a ``mask`` (1 on tokens that count) and a named aggregation mode:

``token-mean``
    mean over every unmasked token of the batch (long replies weigh more).
``seq-mean-token-mean``
    mean over tokens within each sequence, then mean over sequences.

A batch processed in pieces (micro-batches, training processes) passes each piece the
whole batch's count as ``normalizer`` (its tokens for ``token-mean``, its sequences with
tokens for ``seq-mean-token-mean``); the pieces' losses, and so their gradients, then add
up to exactly the whole batch's, however it is split.
"""

from __future__ import annotations

import math

import torch

from turnrl.trainer.advantages import masked_mean
from turnrl.trainer.algorithms import IS_MASK_LEVELS, IS_MASK_MODES, KL_ESTIMATORS, LOSS_AGG_MODES

__all__ = [
    "LOSS_AGG_MODES", "aggregate", "policy_loss", "value_loss", "entropy_from_logits",
    "kl_penalty", "nll_loss", "importance_mask", "KL_ESTIMATORS",
]


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *,
              normalizer: float | None = None) -> torch.Tensor:
    """Reduce a ``[B, S]`` loss over masked tokens.

    Args:
        normalizer: divide the sum by this instead of this batch's own count (tokens for
            ``token-mean``, sequences with tokens for ``seq-mean-token-mean``): the count
            of the whole batch this one is a piece of.

    Raises:
        ValueError: unknown ``mode`` (the allowed ones are listed).
    """
    if mode == "token-mean":
        if normalizer is None:
            return masked_mean(loss, mask)
        return torch.where(mask > 0, loss, torch.zeros_like(loss)).sum() / normalizer
    if mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss, mask, dim=-1)
        has_tokens = (mask.sum(-1) > 0).to(loss.dtype)
        count = has_tokens.sum().clamp(min=1.0) if normalizer is None else normalizer
        return (per_seq * has_tokens).sum() / count
    raise ValueError(f"loss aggregation must be one of {LOSS_AGG_MODES}, got {mode!r}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ratio_guard: float | None = None,
    turn_index: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    agg: str = "token-mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO policy loss per token.

    ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)`` with ``r = exp(logp - old_logp)``.
    With ``dual_clip = c > 1``, a negative-advantage token's loss is also capped at
    ``-c A`` (Ye et al., 2020), so a huge ratio cannot blow up the update.

    With ``ratio_guard = g`` (VL-DAC), every token of a turn in which any ratio exceeds
    ``g`` uses only the clipped term ``-clip(r) A``: its out-of-range tokens send no
    gradient, instead of the pessimistic ``-r A`` that a negative advantage would
    otherwise select for them.

    Args:
        logprobs, old_logprobs, advantages, mask: ``[B, S]``.
        turn_index: ``[B, S]`` turn of each token (-1 outside actions); needed by
            ``ratio_guard``.
        token_weights: ``[B, S]`` constant weights on each token's loss (e.g. truncated
            importance weights between rollout engine and trainer).
        normalizer: the whole batch's count when this is a piece of it (:func:`aggregate`).

    Returns:
        ``(loss, stats)`` with stats ``clipfrac``, ``approx_kl`` (k3 of old vs new),
        ``ratio_max`` and, with a guard, ``guard_frac`` (share of tokens in guarded
        turns), each a detached scalar over masked tokens.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if ratio_guard and turn_index is None:
        raise ValueError("ratio_guard needs turn_index (the turn of each token)")
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        capped = torch.minimum(loss, -advantages * dual_clip)
        loss = torch.where(advantages < 0, capped, loss)
    guarded = None
    if ratio_guard:
        guarded = _turns_over(ratio.detach(), mask, turn_index, ratio_guard)
        loss = torch.where(guarded, clipped, loss)
    if token_weights is not None:
        loss = loss * token_weights.detach()
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.exp(-log_ratio) - 1 + log_ratio, mask),
            "ratio_max": torch.where(mask > 0, ratio, 1.0).max(),
        }
        if guarded is not None:
            stats["guard_frac"] = masked_mean(guarded.float(), mask)
    return aggregate(loss, mask, agg, normalizer=normalizer), stats


def _turns_over(ratio: torch.Tensor, mask: torch.Tensor, turn_index: torch.Tensor,
                limit: float) -> torch.Tensor:
    """``[B, S]`` bool: the token belongs to a turn whose largest masked ratio exceeds
    ``limit``."""
    counted = (mask > 0) & (turn_index >= 0)
    slot = torch.where(counted, turn_index + 1, 0).long()  # slot 0 collects the rest
    per_turn = ratio.new_zeros(ratio.shape[0], int(slot.max()) + 1)
    per_turn = per_turn.scatter_reduce(1, slot, torch.where(counted, ratio, 0.0), reduce="amax")
    over = per_turn > limit
    over[:, 0] = False
    return torch.gather(over, 1, slot) & counted


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
    agg: str = "token-mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)`` at masked positions.

    ``V_clip = old_V + clip(V - old_V, -clip, clip)``; ``clip=None`` disables clipping.
    ``normalizer``: the whole batch's count when this is a piece of it (:func:`aggregate`).
    """
    err = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        loss = 0.5 * torch.maximum(err, err_clipped)
        clipfrac = masked_mean((err_clipped > err).float(), mask).detach()
    else:
        loss = 0.5 * err
        clipfrac = values.new_tensor(0.0)
    return aggregate(loss, mask, agg, normalizer=normalizer), {"vf_clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: ``[..., V] -> [...]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from sampled-token logprobs.

    ``k1 = logp - ref``; ``k2 = 0.5 (logp - ref)^2``; ``k3 = exp(ref - logp) - (ref - logp) - 1``
    (Schulman's unbiased, always non-negative estimator).
    """
    diff = logprobs - ref_logprobs
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff**2
    if kind == "k3":
        return torch.exp(-diff) + diff - 1.0
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {kind!r}")


def nll_loss(logprobs: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean", *,
             normalizer: float | None = None) -> torch.Tensor:
    """Masked negative log-likelihood (SFT on action tokens only); ``normalizer`` as in
    :func:`aggregate`."""
    return aggregate(-logprobs, mask, agg, normalizer=normalizer)


def importance_mask(
    trainer_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str,
    mode: str = "product",
    low: float = 0.5,
    high: float = 2.0,
) -> torch.Tensor:
    """Importance-sampling mask: which of ``mask``'s tokens stay in the policy loss.

    The ratio of a token is ``rho = exp(trainer_logprobs - rollout_logprobs)``: how much
    likelier the trainer finds the sampled token than the engine that sampled it did.
    ``level="token"`` keeps a token iff ``low <= rho <= high``. ``level="sequence"`` keeps
    or drops each row whole, by its ratio over the row's masked tokens: ``exp(sum log rho)``
    (``mode="product"``, the likelihood ratio of the whole reply) or ``exp(mean log rho)``
    (``mode="geometric"``). ``level="none"`` keeps every token. A NaN ratio is outside
    every band. Bounds are compared in log space, in the logprobs' dtype (a ratio equal to a
    bound is kept; ``low = 0``: no lower bound).

    Use the result as the loss mask (it is 0 wherever ``mask`` is): :func:`aggregate` then
    divides by the kept tokens, so dropped tokens leave both the loss and its normaliser
    (``token-mean`` is the mean over kept tokens; ``seq-mean-token-mean`` averages each row
    over its kept tokens, and a row with none left out of the row count), as if never
    sampled.

    Args:
        trainer_logprobs, rollout_logprobs, mask: ``[B, S]``; values off the mask are ignored.

    Returns:
        ``[B, S]`` float mask, 1 on kept tokens.

    Raises:
        ValueError: unknown ``level`` or ``mode``, or a band without 1 in it.
    """
    if level not in IS_MASK_LEVELS:
        raise ValueError(f"is_mask level must be one of {IS_MASK_LEVELS}, got {level!r}")
    if mode not in IS_MASK_MODES:
        raise ValueError(f"is_mask mode must be one of {IS_MASK_MODES}, got {mode!r}")
    if not 0 <= low < 1 < high:
        raise ValueError(f"the is_mask band must satisfy 0 <= low < 1 < high, got [{low}, {high}]")
    counted = mask > 0
    if level == "none":
        return counted.to(trainer_logprobs.dtype)
    log_ratio = torch.where(counted, trainer_logprobs - rollout_logprobs, 0.0)
    log_low = math.log(low) if low > 0 else -math.inf
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True)
        if mode == "geometric":
            log_ratio = log_ratio / counted.sum(-1, keepdim=True).clamp(min=1)
    inside = (log_ratio >= log_low) & (log_ratio <= math.log(high))
    return (counted & inside).to(trainer_logprobs.dtype)
