"""One rank of the multi-process check in ``test_distributed.py`` (started by torchrun).

For every case directory given: build the Trainer from ``overrides.json``, replace its
rollout by this rank's block of the fixed episodes in ``episodes.pkl`` (whole groups,
group indices numbered from 0 as a rank's own rollout numbers them), run one RL update,
and save the metrics, gradients and parameters to ``rank<N>.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: toy_envs

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trainer.distributed import shard_range  # noqa: E402

turnrl.register("turnrl/GuessDist-v0", GuessNumber, override=True, max_turns=3)


def _block(episodes, group_size: int, rank: int, world_size: int):
    """This rank's contiguous block of whole groups, group indices from 0."""
    groups = shard_range(len(episodes) // group_size, rank, world_size)
    mine = episodes[groups.start * group_size: groups.stop * group_size]
    return [dataclasses.replace(t, group=t.group - groups.start) if t.group is not None else t
            for t in mine]


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def run_case(case: Path) -> None:
    cfg = load_config(None, json.loads((case / "overrides.json").read_text())
                      + [f"run_dir={case / 'run'}"])
    trainer = Trainer(cfg)
    rank, world = trainer.dist.rank, trainer.dist.world_size
    assert world == 2, f"expected 2 processes, got {world}"
    episodes = pickle.loads((case / "episodes.pkl").read_bytes())
    mine = _block(episodes, cfg.rollout.group_size, rank, world)
    metrics = trainer.rl_update(mine)
    torch.save({
        "metrics": metrics,
        "episodes": len(mine),
        "grads": _grads(trainer.model),
        "critic_grads": _grads(trainer.critic) if trainer.critic is not None else {},
        "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
    }, case / f"rank{rank}.pt")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        run_case(Path(path))
