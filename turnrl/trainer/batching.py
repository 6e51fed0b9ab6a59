"""From :class:`~turnrl.trajectory.Sample` lists to padded tensors, and the forward pass
that gives per-token logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from turnrl.trainer.losses import entropy_from_logits
from turnrl.trajectory import Sample

__all__ = ["Batch", "collate", "token_logprobs"]


@dataclass
class Batch:
    """Right-padded tensors for a list of samples.

    ``[B, S]``: input_ids, attention_mask, loss_mask, turn_index, rollout_logprobs.
    ``[B, K]``: value_positions, value_turns, value_mask (K = most value reads per sample).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    turn_index: torch.Tensor
    rollout_logprobs: torch.Tensor
    value_positions: torch.Tensor
    value_turns: torch.Tensor
    value_mask: torch.Tensor
    samples: list[int]

    def to(self, device: Any) -> Batch:
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Batch(**fields)


def collate(samples: Sequence[Sample], pad_id: int, indices: Sequence[int] | None = None) -> Batch:
    """Pad ``samples`` on the right into a :class:`Batch`."""
    b = len(samples)
    s = max(len(x) for x in samples)
    k = max(len(x.value_positions) for x in samples)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    attention = torch.zeros((b, s), dtype=torch.long)
    loss_mask = torch.zeros((b, s), dtype=torch.float32)
    turn_index = torch.full((b, s), -1, dtype=torch.long)
    logps = torch.zeros((b, s), dtype=torch.float32)
    vpos = torch.zeros((b, k), dtype=torch.long)
    vturn = torch.full((b, k), -1, dtype=torch.long)
    vmask = torch.zeros((b, k), dtype=torch.float32)
    for i, x in enumerate(samples):
        n = len(x)
        input_ids[i, :n] = torch.tensor(x.input_ids)
        attention[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(x.loss_mask, dtype=torch.float32)
        turn_index[i, :n] = torch.tensor(x.turn_index)
        logps[i, :n] = torch.tensor(x.rollout_logprobs, dtype=torch.float32)
        m = len(x.value_positions)
        vpos[i, :m] = torch.tensor(x.value_positions)
        vturn[i, :m] = torch.tensor(x.value_turns)
        vmask[i, :m] = 1.0
    return Batch(input_ids, attention, loss_mask, turn_index, logps, vpos, vturn, vmask,
                 list(indices) if indices is not None else list(range(b)))


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
) -> dict[str, torch.Tensor]:
    """Logprob of each token given the ones before it.

    Returns a dict with ``logprobs [B, S]`` (position 0, which has no context, is 0),
    and optionally ``entropy [B, S]`` (of the distribution that produced each token) and
    ``hidden [B, S, H]`` (last hidden state).
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                output_hidden_states=with_hidden, use_cache=False)
    logits = out.logits[:, :-1, :].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    chosen = torch.gather(logp_all, -1, input_ids[:, 1:, None]).squeeze(-1)
    zeros = chosen.new_zeros(chosen.shape[0], 1)
    result = {"logprobs": torch.cat([zeros, chosen], dim=1)}
    if with_entropy:
        result["entropy"] = torch.cat([zeros, entropy_from_logits(logits)], dim=1)
    if with_hidden:
        result["hidden"] = out.hidden_states[-1]
    return result
