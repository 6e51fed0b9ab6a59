"""Critics: V(s_t) read at each turn's value position.

``ValueModel``: its own transformer backbone plus a linear head (PPO's separate critic).
``ValueHead``: a small head on the policy's last hidden state; with ``detach=True`` value
learning never moves the policy (VL-DAC), else the backbone is shared.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ValueModel", "ValueHead", "gather_values"]


class ValueHead(nn.Module):
    """``hidden [B, S, H] -> values [B, S]``: a linear layer, or an MLP with ``hidden_dim``."""

    def __init__(self, hidden_size: int, *, hidden_dim: int | None = None, detach: bool = False) -> None:
        super().__init__()
        self.detach = detach
        if hidden_dim:
            self.net = nn.Sequential(
                nn.Linear(hidden_size, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1)
            )
        else:
            self.net = nn.Linear(hidden_size, 1)
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        nn.init.zeros_(last.weight)  # start at V = 0: no bias in the first advantages
        nn.init.zeros_(last.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.detach:
            hidden = hidden.detach()
        # a tensor of its own, not a view of the net's output: FSDP warns about a view as a
        # sharded module's output (an in-place op on one would skip its backward hook)
        return self.net(hidden.float()).squeeze(-1).clone()


class ValueModel(nn.Module):
    """A separate critic: a transformer backbone (no LM head) and a :class:`ValueHead`.

    Args:
        backbone: e.g. ``AutoModel.from_pretrained(path)``.
    """

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ValueHead(backbone.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ValueModel:
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(name_or_path, **kwargs))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return self.head(out.last_hidden_state)


def gather_values(values: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values [B, S]`` at ``positions [B, K]`` -> ``[B, K]`` (0 where ``mask`` is 0)."""
    out = torch.gather(values, 1, positions.clamp(min=0).long())
    return out * mask.to(out.dtype)
