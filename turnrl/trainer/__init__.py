"""Trainers: one recipe (rollout -> advantages -> updates -> eval -> checkpoint) over
components, with algorithms as rows of one table (:mod:`turnrl.trainer.algorithms`) over
the pure functions in ``advantages`` and ``losses``.

Needs the ``train`` extra (torch, transformers). The configuration and the algorithm
table import no torch: :class:`Trainer` (and with it torch) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from turnrl.trainer.config import TrainConfig, load_config

if TYPE_CHECKING:
    from turnrl.trainer.trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":  # torch and transformers load here, not at `import turnrl.trainer`
        from turnrl.trainer.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'turnrl.trainer' has no attribute {name!r}")
