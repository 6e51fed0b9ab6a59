"""One rank of the multi-process checks in ``test_distributed.py`` and ``test_fsdp.py``
(started by torchrun).

For every case directory given: build the Trainer from ``overrides.json``, replace its
rollout by this rank's block of the fixed episodes in ``episodes.pkl`` (whole groups,
group indices numbered from 0 as a rank's own rollout numbers them), run one RL update,
and save the metrics, gradients and parameters (whole, also under FSDP) to ``rank<N>.pt``.
A case directory with ``episodes2.pkl`` also checkpoints that update (``run/``), then
resumes the one-process run's checkpoint copied to ``resume/`` and saves the parameters
after an update on those episodes to ``resumed<N>.pt``. A case with ``sft.episodes`` runs
the SFT warm start instead of the update, then resets the KL reference to its result.
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
from turnrl.agents.vllm import merged_state_items  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trainer.distributed import shard_range  # noqa: E402
from turnrl.trainer.fsdp import whole_tensors  # noqa: E402

turnrl.register("turnrl/GuessDist-v0", GuessNumber, override=True, max_turns=3)


def _block(episodes, group_size: int, rank: int, world_size: int):
    """This rank's contiguous block of whole groups, group indices from 0."""
    groups = shard_range(len(episodes) // group_size, rank, world_size)
    mine = episodes[groups.start * group_size: groups.stop * group_size]
    return [dataclasses.replace(t, group=t.group - groups.start) if t.group is not None else t
            for t in mine]


def _grads(module) -> dict[str, torch.Tensor]:
    """Gradients by parameter name, gathered whole from FSDP's shards."""
    return whole_tensors({n: p.grad.detach().clone() for n, p in module.named_parameters()
                          if p.grad is not None})


def _params(module) -> dict[str, torch.Tensor]:
    return whole_tensors({n: p.detach().clone() for n, p in module.named_parameters()})


def run_case(case: Path) -> None:
    cfg = load_config(None, json.loads((case / "overrides.json").read_text())
                      + [f"run_dir={case / 'run'}"])
    trainer = Trainer(cfg)
    rank, world = trainer.dist.rank, trainer.dist.world_size
    assert world == 2, f"expected 2 processes, got {world}"
    if cfg.sft.episodes:
        mine, metrics = [], trainer.train_sft()
        trainer.learner.reset_reference()
    else:
        episodes = pickle.loads((case / "episodes.pkl").read_bytes())
        mine = _block(episodes, cfg.rollout.group_size, rank, world)
        metrics = trainer.rl_update(mine)
    torch.save({
        "metrics": metrics,
        "episodes": len(mine),
        "grads": _grads(trainer.model),
        "critic_grads": _grads(trainer.critic) if trainer.critic is not None else {},
        "params": _params(trainer.model),
        "reference": _params(trainer.ref_model) if trainer.ref_model is not None else {},
        "synced": {n: t.detach().clone() for n, t in merged_state_items(trainer.model)},
    }, case / f"rank{rank}.pt")
    if (case / "episodes2.pkl").exists():
        trainer.update = 1
        trainer.save()
        trainer.close()
        resumed = Trainer(dataclasses.replace(cfg, run_dir=str(case / "resume")), resume=True)
        episodes = pickle.loads((case / "episodes2.pkl").read_bytes())
        resumed.rl_update(_block(episodes, cfg.rollout.group_size, rank, world))
        torch.save({"params": _params(resumed.model)}, case / f"resumed{rank}.pt")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        run_case(Path(path))
