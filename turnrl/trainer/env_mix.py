"""Which environments and seeds a training run plays: one env id, or a suite whose
entries are mixed in every rollout batch by sampling weight."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from turnrl.envs import registry
from turnrl.envs.pool import EnvPool, make_pool
from turnrl.envs.suites import SuiteEntry, get_suite
from turnrl.errors import ConfigError
from turnrl.rollout import collect, env_kwargs_for
from turnrl.trainer.distributed import shard_range
from turnrl.trajectory import Trajectory

__all__ = ["EnvMix"]


class EnvMix:
    """Environments of a run with their seeds and weights.

    Every episode it plays carries its entry's name (``Trajectory.entry``).

    Args:
        entries: the suite entries to play (an env id is a one-entry suite).
        weights: sampling weight of each entry for training episodes (need not sum to 1;
            default equal).
        seed: seeds the sampler of train seeds and env choices.
    """

    def __init__(self, entries: Sequence[SuiteEntry], seed: int = 0, *,
                 weights: Sequence[float] | None = None, env_pool: str = "local",
                 envs_per_worker: int = 1, ray_address: str | None = None) -> None:
        if not entries:
            raise ConfigError("no environments to train on")
        weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]
        total = sum(weights)
        if len(weights) != len(entries) or total <= 0 or any(w < 0 for w in weights):
            raise ConfigError(f"env weights must be one per entry, >= 0, with a positive sum; "
                              f"got {weights} for {len(entries)} entries")
        self.entries = list(entries)
        self.probs = np.array([w / total for w in weights])
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = 0, 1  # see shard()
        self.pool_settings = {"envs_per_worker": envs_per_worker, "ray_address": ray_address}
        self.env_pool = env_pool
        self._pools: dict[tuple[str, str], EnvPool] = {}

    @classmethod
    def from_config(cls, env_cfg: Any, seed: int = 0, **pool: Any) -> EnvMix:
        """Build from an :class:`~turnrl.trainer.config.EnvConfig`."""
        if env_cfg.suite:
            suite = get_suite(env_cfg.suite)
            names = [e.name for e in suite.entries]
            unknown = sorted(set(env_cfg.weights) - set(names))
            if unknown:
                raise ConfigError(f"env.weights names {unknown} are not entries of suite "
                                  f"{suite.name!r}; entries: {names}")
            return cls(list(suite.with_kwargs(env_cfg.kwargs)), seed, **pool,
                       weights=[float(env_cfg.weights.get(n, 1.0)) for n in names])
        registry.spec(env_cfg.id)  # unknown ids fail here, with suggestions
        entry = SuiteEntry(env_cfg.id, dict(env_cfg.kwargs), range(*env_cfg.train_seeds),
                           range(*env_cfg.eval_seeds))
        return cls([entry], seed, **pool)

    def make_env_fn(self, entry: SuiteEntry, agent: Any = None) -> Callable[[], Any]:
        kwargs = env_kwargs_for(agent, entry.env_id, entry.kwargs)
        return registry.factory(entry.env_id, **kwargs)

    def envs_for(self, entry: SuiteEntry, agent: Any, num_envs: int) -> Callable[[], Any] | EnvPool:
        """What :func:`collect` plays on: local envs are made per call; worker pools
        (subprocess, Ray) are started once per (entry, env kwargs) and kept for the run."""
        make = self.make_env_fn(entry, agent)
        if self.env_pool == "local":
            return make
        key = (entry.name, repr(sorted(make.kwargs.items())))
        pool = self._pools.get(key)
        if pool is None or pool.size < num_envs:
            if pool is not None:
                pool.close()
            pool = self._pools[key] = make_pool(self.env_pool, make, num_envs, **self.pool_settings)
        return pool

    def close(self) -> None:
        """Stop the worker pools."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def prepare(self, eval_episodes: int, *, max_train_seeds: int = 1000) -> None:
        """Get episodes ready ahead of time (TextWorld: generate the games in parallel):
        the eval seeds that will be played, and the train seeds when there are at most
        ``max_train_seeds`` of them (larger pools are prepared lazily, as played)."""
        for entry in self.entries:
            seeds = list(entry.eval_seeds[:eval_episodes])
            if len(entry.train_seeds) <= max_train_seeds:
                seeds += list(entry.train_seeds)
            registry.prepare(entry.env_id, seeds, entry.kwargs)

    def shard(self, rank: int, world_size: int) -> None:
        """Play only rank ``rank``'s share of every collection from now on (one of
        ``world_size`` training processes): a contiguous block of the train groups (every
        rank draws all of them from the same RNG, so the RNG stays in step and no group is
        split) and of each entry's eval seeds. :meth:`merge` joins the ranks' episodes."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size

    def _mine(self, items: list[Any]) -> list[Any]:
        return [items[i] for i in shard_range(len(items), self.rank, self.world_size)]

    def sample_groups(self, n_groups: int) -> list[list[int]]:
        """Train seeds for ``n_groups`` episode groups (this rank's share of them, see
        :meth:`shard`), split by entry."""
        picks = self.rng.choice(len(self.entries), size=n_groups, p=self.probs)
        drawn = []
        for i in picks:
            seeds = self.entries[i].train_seeds
            drawn.append((int(i), int(seeds[self.rng.integers(len(seeds))])))
        out: list[list[int]] = [[] for _ in self.entries]
        for i, seed in self._mine(drawn):
            out[i].append(seed)
        return out

    def merge(self, shards: list[list[Trajectory]]) -> list[Trajectory]:
        """Join the episodes the ranks of a sharded run collected (one list per rank, in
        rank order) into the order and group numbers one process would have produced:
        entry by entry, each rank's block in turn, group indices offset past the groups
        of the ranks before."""
        position = {e.name: i for i, e in enumerate(self.entries)}
        offset: dict[str, int] = {}
        merged = []
        for shard in shards:
            groups: dict[str, int] = {}
            for traj in shard:
                if traj.group is not None:
                    groups[traj.entry] = max(groups.get(traj.entry, 0), traj.group + 1)
                    traj = dataclasses.replace(traj, group=offset.get(traj.entry, 0) + traj.group)
                merged.append(traj)
            for name, count in groups.items():
                offset[name] = offset.get(name, 0) + count
        merged.sort(key=lambda traj: position[traj.entry])  # stable: ranks' blocks stay in order
        return merged

    def collect_train(self, agent: Any, *, episodes: int, group_size: int, **kwargs: Any
                      ) -> list[Trajectory]:
        """Play this rank's share of ``episodes`` training episodes mixed over entries
        (keyword arguments go to :func:`~turnrl.rollout.collect`)."""
        result = []
        for entry, seeds in zip(self.entries, self.sample_groups(episodes // group_size), strict=True):
            if seeds:
                result += self._play(entry, agent, seeds, group_size=group_size, **kwargs)
        return result

    def collect_eval(self, agent: Any, *, episodes: int, **kwargs: Any) -> list[Trajectory]:
        """This rank's share of the first ``episodes`` eval seeds of every entry."""
        result = []
        for entry in self.entries:
            result += self._play(entry, agent, self._mine(list(entry.eval_seeds[:episodes])), **kwargs)
        return result

    def _play(self, entry: SuiteEntry, agent: Any, seeds: list[int], **kwargs: Any) -> list[Trajectory]:
        return collect(self.envs_for(entry, agent, kwargs.get("num_envs", 8)), agent, seeds,
                       env_id=entry.env_id, entry=entry.name, **kwargs)

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

