"""Trainers: one loop (rollout -> advantages -> updates -> eval -> checkpoint) with
algorithm presets over the pure functions in ``advantages`` and ``losses``.

Needs the ``train`` extra (torch, transformers).
"""

from turnrl.trainer.config import TrainConfig, load_config
from turnrl.trainer.trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "load_config"]
