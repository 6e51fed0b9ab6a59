"""Which environments and seeds a training run plays: one env id, or a suite whose
entries are mixed in every rollout batch by sampling weight."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from turnrl.envs import registry
from turnrl.envs.suites import get_suite
from turnrl.errors import ConfigError
from turnrl.rollout import collect
from turnrl.trajectory import Trajectory

__all__ = ["EnvMix", "MixEntry"]


@dataclass(frozen=True)
class MixEntry:
    name: str
    env_id: str
    kwargs: dict[str, Any]
    train_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    weight: float


class EnvMix:
    """Environments of a run with their seeds and weights.

    Args:
        entries: the envs; weights need not sum to 1.
        seed: seeds the sampler of train seeds and env choices.
    """

    def __init__(self, entries: list[MixEntry], seed: int = 0) -> None:
        if not entries:
            raise ConfigError("no environments to train on")
        total = sum(e.weight for e in entries)
        if total <= 0 or any(e.weight < 0 for e in entries):
            raise ConfigError(f"env weights must be >= 0 with a positive sum, got "
                              f"{[e.weight for e in entries]}")
        self.entries = entries
        self.probs = np.array([e.weight / total for e in entries])
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, env_cfg: Any, seed: int = 0) -> EnvMix:
        """Build from an :class:`~turnrl.trainer.config.EnvConfig`."""
        if env_cfg.suite:
            suite = get_suite(env_cfg.suite)
            names = [e.name for e in suite.entries]
            unknown = sorted(set(env_cfg.weights) - set(names))
            if unknown:
                raise ConfigError(f"env.weights names {unknown} are not entries of suite "
                                  f"{suite.name!r}; entries: {names}")
            entries = [
                MixEntry(e.name, e.env_id, dict(e.kwargs), e.train_seeds, e.eval_seeds,
                         float(env_cfg.weights.get(e.name, 1.0)))
                for e in suite.entries
            ]
        else:
            registry.spec(env_cfg.id)  # unknown ids fail here, with suggestions
            entries = [MixEntry(
                env_cfg.id, env_cfg.id, dict(env_cfg.kwargs),
                tuple(range(*env_cfg.train_seeds)), tuple(range(*env_cfg.eval_seeds)), 1.0,
            )]
        return cls(entries, seed)

    def make_env_fn(self, entry: MixEntry, agent: Any = None) -> Callable[[], Any]:
        kwargs = registry.kwargs_for_agent(entry.env_id, entry.kwargs, agent)
        return lambda: registry.make(entry.env_id, **kwargs)

    def prepare(self, eval_episodes: int, *, max_train_seeds: int = 1000) -> None:
        """Get episodes ready ahead of time (TextWorld: generate the games in parallel):
        the eval seeds that will be played, and the train seeds when there are at most
        ``max_train_seeds`` of them (larger pools are prepared lazily, as played)."""
        for entry in self.entries:
            seeds = list(entry.eval_seeds[:eval_episodes])
            if len(entry.train_seeds) <= max_train_seeds:
                seeds += list(entry.train_seeds)
            registry.prepare(entry.env_id, seeds, entry.kwargs)

    def sample_groups(self, n_groups: int) -> list[list[int]]:
        """Train seeds for ``n_groups`` episode groups, split by entry."""
        picks = self.rng.choice(len(self.entries), size=n_groups, p=self.probs)
        out: list[list[int]] = [[] for _ in self.entries]
        for i in picks:
            seeds = self.entries[i].train_seeds
            out[i].append(int(seeds[self.rng.integers(len(seeds))]))
        return out

    def collect_train(self, agent: Any, *, episodes: int, group_size: int, **kwargs: Any
                      ) -> list[tuple[str, Trajectory]]:
        """Play ``episodes`` training episodes mixed over entries; (entry name, trajectory)."""
        result = []
        for entry, seeds in zip(self.entries, self.sample_groups(episodes // group_size), strict=True):
            if not seeds:
                continue
            trajs = collect(self.make_env_fn(entry, agent), agent, seeds, env_id=entry.env_id,
                            group_size=group_size, **kwargs)
            result.extend((entry.name, t) for t in trajs)
        return result

    def collect_eval(self, agent: Any, *, episodes: int, **kwargs: Any) -> list[tuple[str, Trajectory]]:
        """The first ``episodes`` eval seeds of every entry."""
        result = []
        for entry in self.entries:
            seeds = list(entry.eval_seeds[:episodes])
            trajs = collect(self.make_env_fn(entry, agent), agent, seeds, env_id=entry.env_id, **kwargs)
            result.extend((entry.name, t) for t in trajs)
        return result

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
