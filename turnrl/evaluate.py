"""Success-rate evaluation of any agent on an environment or a suite.

Success is ``info["won"]`` at the end of an episode. Rates come with a 95% Wilson score
interval, which stays inside [0, 1] and behaves at 0% and 100% where the normal
approximation does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnrl.agents.base import Agent
from turnrl.envs import registry
from turnrl.envs.suites import SuiteEntry, get_suite, is_suite, list_suites
from turnrl.errors import ConfigError, UnknownEnvError, did_you_mean
from turnrl.rollout import collect, env_kwargs_for
from turnrl.trajectory import Trajectory

__all__ = ["EnvResult", "evaluate", "wilson_interval", "resolve_target", "summarize",
           "episode_metrics"]


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    >>> wilson_interval(0, 10)
    (0.0, 0.27753279986288394)
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class EnvResult:
    """Evaluation of one environment (one suite entry).

    ``to_dict`` gives the stable JSON schema written by ``turnrl eval --json``.
    """

    env: str
    episodes: int
    successes: int
    mean_return: float
    mean_turns: float
    invalid_rate: float
    failed: int = 0
    restarts: int = 0
    trajectories: list[Trajectory] = field(default_factory=list, repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def success_ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.success_ci95
        return {
            "env": self.env,
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "success_ci95": [low, high],
            "mean_return": self.mean_return,
            "mean_turns": self.mean_turns,
            "invalid_rate": self.invalid_rate,
            "failed": self.failed,
            "restarts": self.restarts,
        }

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat ``{prefix}/success``, ``..._ci_low/high``, ``return``, ``turns``,
        ``invalid_rate``, ``episodes``, ``failed`` (crashed episodes) and ``restarts``
        (replays after a lost env worker), for training logs."""
        low, high = self.success_ci95
        return {
            f"{prefix}/success": self.success_rate, f"{prefix}/success_ci_low": low,
            f"{prefix}/success_ci_high": high, f"{prefix}/return": self.mean_return,
            f"{prefix}/turns": self.mean_turns, f"{prefix}/invalid_rate": self.invalid_rate,
            f"{prefix}/episodes": float(self.episodes), f"{prefix}/failed": float(self.failed),
            f"{prefix}/restarts": float(self.restarts),
        }

    @classmethod
    def from_trajectories(cls, env: str, trajectories: Sequence[Trajectory]) -> EnvResult:
        n = len(trajectories)
        turns = sum(t.num_turns for t in trajectories)
        return cls(
            env=env,
            episodes=n,
            successes=sum(t.won for t in trajectories),
            mean_return=float(np.mean([t.total_return for t in trajectories])) if n else 0.0,
            mean_turns=turns / n if n else 0.0,
            invalid_rate=sum(t.invalid_actions for t in trajectories) / turns if turns else 0.0,
            failed=sum(t.failed is not None for t in trajectories),
            restarts=sum(t.restarts for t in trajectories),
            trajectories=list(trajectories),
        )


def summarize(trajectories: Sequence[Trajectory]) -> list[EnvResult]:
    """One :class:`EnvResult` per suite entry (``Trajectory.entry``), in order of first
    appearance: the statistics ``turnrl eval`` prints and training logs."""
    by_entry: dict[str, list[Trajectory]] = {}
    for traj in trajectories:
        by_entry.setdefault(traj.entry or traj.env_id, []).append(traj)
    return [EnvResult.from_trajectories(name, trajs) for name, trajs in by_entry.items()]


def episode_metrics(trajectories: Sequence[Trajectory], prefix: str) -> dict[str, float]:
    """Training-log statistics of a batch of episodes: over all of them
    (``{prefix}/success``, ...) and, when they come from several suite entries, per entry
    (``{prefix}/{entry}/success``, ...)."""
    if not trajectories:
        return {}
    out = EnvResult.from_trajectories("", trajectories).metrics(prefix)
    per_entry = summarize(trajectories)
    if len(per_entry) > 1:
        for result in per_entry:
            out.update(result.metrics(f"{prefix}/{result.env}"))
    return out


def resolve_target(
    target: str, *, episodes: int | None, seed: int, env_kwargs: dict[str, Any] | None = None
) -> list[tuple[SuiteEntry, list[int]]]:
    """Turn an env id or a suite name into (entry, eval seeds) pairs.

    An env id plays seeds ``seed, seed + 1, ...`` (``episodes`` of them, default 10); a
    suite plays the first ``episodes`` eval seeds of each entry (default: all of them).
    """
    if episodes is not None and episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    if is_suite(target):
        if env_kwargs:
            raise ConfigError("env kwargs cannot be combined with a suite; suites fix them")
        pairs = []
        for entry in get_suite(target).entries:
            n = len(entry.eval_seeds) if episodes is None else episodes
            if n > len(entry.eval_seeds):
                raise ConfigError(
                    f"suite {target!r} entry {entry.name!r} has {len(entry.eval_seeds)} eval "
                    f"seeds; asked for {n} episodes"
                )
            pairs.append((entry, list(entry.eval_seeds[:n])))
        return pairs
    try:
        registry.spec(target)
    except UnknownEnvError:
        suites = [s.name for s in list_suites()]
        raise UnknownEnvError(
            f"{target!r} is neither a registered env id nor a suite."
            f"{did_you_mean(target, [s.id for s in registry.list_envs()] + suites)} "
            f"Suites: {', '.join(suites)}. Run `turnrl envs` for env ids."
        ) from None
    registry.factory(target, **(env_kwargs or {}))  # a keyword the env does not take fails now
    n = 10 if episodes is None else episodes
    entry = SuiteEntry(env_id=target, kwargs=dict(env_kwargs or {}), eval_seeds=tuple(range(seed, seed + n)))
    return [(entry, list(entry.eval_seeds))]


def evaluate(
    target: str,
    agent: Agent,
    *,
    episodes: int | None = None,
    seed: int = 0,
    num_envs: int = 8,
    env_kwargs: dict[str, Any] | None = None,
    mode: str = "lockstep",
    env_pool: str = "local",
    envs_per_worker: int = 1,
    ray_address: str | None = None,
    on_episode_end: Callable[[Trajectory], Any] | None = None,
) -> list[EnvResult]:
    """Evaluate ``agent`` on an env id or a suite.

    Args:
        target: a registered env id (``"turnrl/TextWorld-v0"``) or suite (``"textworld"``).
        agent: any :class:`~turnrl.agents.Agent`.
        episodes: episodes per env (suite default: all its eval seeds; env default: 10).
        seed: first reset seed when ``target`` is an env id.
        num_envs: environments in flight at once.
        env_kwargs: keyword arguments for ``turnrl.make`` (env ids only).
        mode: ``"lockstep"`` or ``"async"`` (agents with ``agenerate``: the vLLM policy, the
            OpenAI-compatible agent); see :func:`~turnrl.rollout.collect`.
        env_pool, envs_per_worker, ray_address: where the envs run (``"local"``,
            ``"subprocess"``, ``"ray"``); see :mod:`turnrl.envs.pool`.
        on_episode_end: called with each finished trajectory.

    Returns:
        One :class:`EnvResult` per env (suite entry), in suite order.

    Example:
        >>> results = turnrl.evaluate("textworld", turnrl.agents.ExpertAgent(), episodes=3)
        >>> [round(r.success_rate, 2) for r in results]
        [1.0, 1.0, 1.0, 1.0]
    """
    results = []
    for entry, seeds in resolve_target(target, episodes=episodes, seed=seed, env_kwargs=env_kwargs):
        kwargs = env_kwargs_for(agent, entry.env_id, entry.kwargs)
        registry.prepare(entry.env_id, seeds, kwargs)
        trajectories = collect(
            registry.factory(entry.env_id, **kwargs), agent, seeds, env_id=entry.env_id,
            entry=entry.name,
            num_envs=num_envs, mode=mode, env_pool=env_pool, envs_per_worker=envs_per_worker,
            ray_address=ray_address, on_episode_end=on_episode_end,
        )
        results.append(EnvResult.from_trajectories(entry.name, trajectories))
    return results
