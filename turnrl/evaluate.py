"""Success-rate evaluation of any agent on an environment or a suite.

Success is ``info["won"]`` at the end of an episode. Rates come with a 95% Wilson score
interval, which stays inside [0, 1] and behaves at 0% and 100% where the normal
approximation does not.

With ``samples_per_seed=n`` every seed (game) is played n times, and ``pass_at=(k, ...)``
reports pass@k: the chance that at least one of k attempts at a game succeeds, by the
unbiased estimator of Chen et al. (2021) per seed, averaged over seeds, with a 95%
bootstrap interval over seeds. Each episode is also kept as an :class:`EpisodeRecord`
(env, seed, sample, won), the unit that :mod:`turnrl.compare` pairs.
"""

from __future__ import annotations

import math
from collections import Counter
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
           "episode_metrics", "EpisodeRecord", "PassAtK", "pass_at_k", "pass_at_k_over_seeds",
           "check_pass_at", "bootstrap_ci", "episode_records", "samples_differ",
           "BOOTSTRAP_RESAMPLES"]

#: Resamples of every bootstrap interval (pass@k here, paired differences in compare).
BOOTSTRAP_RESAMPLES = 10_000


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


def bootstrap_ci(
    sums: Sequence[float], counts: Sequence[float] | None = None, *,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over clusters, resampled with replacement.

    Cluster j contributes ``sums[j]`` over ``counts[j]`` units (default one each); each
    resample draws as many clusters as there are and takes ``sum(sums) / sum(counts)``. A
    cluster is a seed: its samples (and, in a paired comparison, its pairs) move together.
    With all clusters equal the interval is that single value.

    Args:
        sums, counts: per-cluster totals and unit counts (counts > 0), same length >= 1.
        resamples: bootstrap resamples (draws are from ``numpy.random.default_rng(seed)``,
            so the interval is reproducible).
        level: coverage of the interval.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: no clusters, mismatched lengths, or resamples < 1.
    """
    values = np.asarray(sums, dtype=float)
    sizes = np.ones_like(values) if counts is None else np.asarray(counts, dtype=float)
    if values.size == 0 or values.shape != sizes.shape or resamples < 1:
        raise ValueError(f"bootstrap_ci needs >= 1 cluster, sums and counts of one length and "
                         f"resamples >= 1; got {values.size} sums, {sizes.size} counts, "
                         f"resamples={resamples}")
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    step = max(1, 1_000_000 // values.size)  # bounds the index matrix at ~8 MB
    for start in range(0, resamples, step):
        idx = rng.integers(0, values.size, size=(min(step, resamples - start), values.size))
        stats[start:start + len(idx)] = values[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def check_pass_at(samples_per_seed: int, pass_at: Sequence[int]) -> None:
    """Raise :class:`ConfigError` unless ``samples_per_seed >= 1`` and every k of
    ``pass_at`` is in ``[1, samples_per_seed]`` (pass@k draws k of the n samples)."""
    if samples_per_seed < 1:
        raise ConfigError(f"samples per seed must be >= 1, got {samples_per_seed}")
    for k in pass_at:
        if k < 1:
            raise ConfigError(f"pass@k needs k >= 1, got k={k}")
        if k > samples_per_seed:
            raise ConfigError(
                f"pass@{k} needs at least {k} samples per seed, got {samples_per_seed}; "
                f"play more (--samples-per-seed {k}) or ask for k <= {samples_per_seed}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one seed from ``n`` samples with ``c`` successes (Chen et al.,
    2021): ``1 - C(n - c, k) / C(n, k)``, the chance that k samples drawn without
    replacement from the n hold a success. Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``,
    which needs no huge binomials.

    >>> pass_at_k(5, 2, 2)   # 1 - C(3, 2) / C(5, 2) = 1 - 3/10
    0.7

    Raises:
        ConfigError: not ``0 <= c <= n`` or not ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ConfigError(f"pass@k needs 0 <= successes <= samples, got c={c}, n={n}")
    check_pass_at(n, [k])
    if n - c < k:  # every k-subset holds a success
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode's outcome: what pass@k counts and :mod:`turnrl.compare` pairs.

    Attributes:
        env: the suite entry's name (the env id outside a suite).
        seed: the reset seed, i.e. the game.
        sample: 0, 1, ... over the episodes played on the same (env, seed).
        won: success (``info["won"]``); a crashed episode is not won.
        total_return: undiscounted return.
        turns: env steps.
        failed: the episode crashed (see :attr:`Trajectory.failed`).
    """

    env: str
    seed: int | None
    sample: int
    won: bool
    total_return: float = 0.0
    turns: int = 0
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The ``episode_results`` item of ``turnrl eval --json`` (``env`` is its parent's)."""
        return {"seed": self.seed, "sample": self.sample, "won": self.won,
                "return": self.total_return, "turns": self.turns, "failed": self.failed}

    @classmethod
    def from_dict(cls, env: str, data: dict[str, Any]) -> EpisodeRecord:
        return cls(env=env, seed=data["seed"], sample=int(data["sample"]), won=bool(data["won"]),
                   total_return=float(data.get("return", 0.0)), turns=int(data.get("turns", 0)),
                   failed=bool(data.get("failed", False)))


def episode_records(trajectories: Sequence[Trajectory]) -> list[EpisodeRecord]:
    """One record per trajectory, numbering the samples of each (entry, seed) 0, 1, ... in
    the order given (:func:`~turnrl.rollout.collect` returns a seed's samples together)."""
    seen: Counter[tuple[str, int | None]] = Counter()
    out = []
    for t in trajectories:
        key = (t.entry or t.env_id, t.seed)
        out.append(EpisodeRecord(env=key[0], seed=t.seed, sample=seen[key], won=t.won,
                                 total_return=t.total_return, turns=t.num_turns,
                                 failed=t.failed is not None))
        seen[key] += 1
    return out


@dataclass(frozen=True)
class PassAtK:
    """pass@k of one env: the mean over seeds of :func:`pass_at_k`, with a 95% percentile
    bootstrap interval over seeds (:func:`bootstrap_ci`)."""

    k: int
    value: float
    ci95: tuple[float, float]
    seeds: int

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "value": self.value, "ci95": list(self.ci95), "seeds": self.seeds}


def pass_at_k_over_seeds(records: Sequence[EpisodeRecord], k: int, *,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> PassAtK:
    """pass@k of records from one env: per seed ``pass_at_k(n_seed, c_seed, k)``, averaged
    over seeds with equal weight, and a bootstrap interval over seeds.

    Raises:
        ConfigError: no records, or a seed with fewer than k samples.
    """
    if not records:
        raise ConfigError(f"pass@{k} needs at least one episode")
    n: Counter[int | None] = Counter(r.seed for r in records)
    c: Counter[int | None] = Counter(r.seed for r in records if r.won)
    short = sorted((s for s in n if n[s] < k), key=str)
    if short:
        raise ConfigError(f"pass@{k} needs at least {k} samples of every seed; seed {short[0]} "
                          f"has {n[short[0]]}")
    per_seed = [pass_at_k(n[s], c[s], k) for s in n]
    ci = bootstrap_ci(per_seed, resamples=resamples, seed=seed)
    return PassAtK(k=k, value=float(np.mean(per_seed)), ci95=ci, seeds=len(per_seed))


def samples_differ(trajectories: Sequence[Trajectory]) -> bool:
    """Whether some (entry, seed) was played in two different ways (different action
    texts). False when every seed's samples are identical: a deterministic agent (greedy
    decoding, temperature 0, an oracle), for which pass@k equals pass@1."""
    plays: dict[tuple[str, int | None], tuple[str, ...]] = {}
    for t in trajectories:
        key, actions = (t.entry or t.env_id, t.seed), tuple(turn.action for turn in t.turns)
        if plays.setdefault(key, actions) != actions:
            return True
    return False


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
    #: Episodes played on each seed (the largest count where they differ).
    samples_per_seed: int = 1
    #: pass@k for each k asked for, in the order asked.
    pass_at: list[PassAtK] = field(default_factory=list)
    #: One record per episode: what ``turnrl compare`` pairs.
    records: list[EpisodeRecord] = field(default_factory=list, repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def success_ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    @property
    def seeds(self) -> int:
        """Distinct seeds (games) played."""
        return len({r.seed for r in self.records})

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
            "seeds": self.seeds,
            "samples_per_seed": self.samples_per_seed,
            "pass_at_k": [p.to_dict() for p in self.pass_at],
            "episode_results": [r.to_dict() for r in self.records],
        }

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat ``{prefix}/success``, ``..._ci_low/high``, ``return``, ``turns``,
        ``invalid_rate``, ``episodes``, ``failed`` (crashed episodes) and ``restarts``
        (replays after a lost env worker), for training logs; ``{prefix}/pass@k`` (and
        its ``_ci_low/high``) for each pass@k computed."""
        low, high = self.success_ci95
        out = {
            f"{prefix}/success": self.success_rate, f"{prefix}/success_ci_low": low,
            f"{prefix}/success_ci_high": high, f"{prefix}/return": self.mean_return,
            f"{prefix}/turns": self.mean_turns, f"{prefix}/invalid_rate": self.invalid_rate,
            f"{prefix}/episodes": float(self.episodes), f"{prefix}/failed": float(self.failed),
            f"{prefix}/restarts": float(self.restarts),
        }
        for p in self.pass_at:
            out.update({f"{prefix}/pass@{p.k}": p.value, f"{prefix}/pass@{p.k}_ci_low": p.ci95[0],
                        f"{prefix}/pass@{p.k}_ci_high": p.ci95[1]})
        return out

    @classmethod
    def from_trajectories(cls, env: str, trajectories: Sequence[Trajectory], *,
                          pass_at: Sequence[int] = ()) -> EnvResult:
        """Statistics of one env's episodes; ``pass_at``: the k of each pass@k to compute
        (every seed needs at least k samples)."""
        n = len(trajectories)
        turns = sum(t.num_turns for t in trajectories)
        records = episode_records(trajectories)
        per_seed = Counter(r.seed for r in records)
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
            samples_per_seed=max(per_seed.values(), default=1),
            pass_at=[pass_at_k_over_seeds(records, k) for k in pass_at] if n else [],
            records=records,
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
    ``env_kwargs`` go to the env, or to every entry of a suite (see
    :meth:`~turnrl.envs.suites.Suite.with_kwargs`).
    """
    if episodes is not None and episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    if is_suite(target):
        pairs = []
        for entry in get_suite(target).with_kwargs(env_kwargs or {}):
            registry.factory(entry.env_id, **entry.kwargs)  # a keyword it does not take fails now
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
    samples_per_seed: int = 1,
    pass_at: Sequence[int] = (),
    greedy: bool | None = None,
    context: str = "full",
    max_context_tokens: int | None = None,
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
        episodes: seeds (games) per env (suite default: all its eval seeds; env default: 10).
        seed: first reset seed when ``target`` is an env id.
        num_envs: environments in flight at once.
        env_kwargs: keyword arguments for ``turnrl.make`` (env ids only).
        samples_per_seed: episodes played on each seed: the same game (same reset seed)
            ``n`` times; the agent's replies differ only as far as it samples.
        pass_at: the k of each pass@k to report (each ``1 <= k <= samples_per_seed``).
        greedy: token policies and async agents: argmax decoding (True) or sampling at
            their temperature (False). None: the agent's default with one sample per seed
            and sampling with more, since n greedy copies of a game would all play alike.
            Other agents sample as they always do (``random`` draws anew each episode;
            ``expert`` repeats itself -- see :func:`samples_differ`).
        context, max_context_tokens: what a token policy sees each turn; see
            :func:`~turnrl.rollout.collect` (a run's ``rollout.context``).
        mode: ``"lockstep"`` or ``"async"`` (agents with ``agenerate``: the vLLM policy, the
            OpenAI-compatible agent); see :func:`~turnrl.rollout.collect`.
        env_pool, envs_per_worker, ray_address: where the envs run (``"local"``,
            ``"subprocess"``, ``"ray"``); see :mod:`turnrl.envs.pool`.
        on_episode_end: called with each finished trajectory.

    Returns:
        One :class:`EnvResult` per env (suite entry), in suite order.

    Raises:
        ConfigError: bad episodes, samples_per_seed or pass_at (k > samples_per_seed),
            before anything is played.

    Example:
        >>> results = turnrl.evaluate("textworld", turnrl.agents.ExpertAgent(), episodes=3)
        >>> [round(r.success_rate, 2) for r in results]
        [1.0, 1.0, 1.0, 1.0]
        >>> r = turnrl.evaluate("textworld", turnrl.agents.RandomAgent(seed=0), episodes=5,
        ...                     samples_per_seed=4, pass_at=(1, 4))[0]
        >>> [(p.k, p.value) for p in r.pass_at]      # doctest: +SKIP
    """
    check_pass_at(samples_per_seed, pass_at)
    if greedy is None and samples_per_seed > 1:
        greedy = False
    results = []
    for entry, seeds in resolve_target(target, episodes=episodes, seed=seed, env_kwargs=env_kwargs):
        kwargs = env_kwargs_for(agent, entry.env_id, entry.kwargs)
        registry.prepare(entry.env_id, seeds, kwargs)
        trajectories = collect(
            registry.factory(entry.env_id, **kwargs), agent, seeds, env_id=entry.env_id,
            entry=entry.name, group_size=samples_per_seed, greedy=greedy, context=context,
            max_context_tokens=max_context_tokens,
            num_envs=num_envs, mode=mode, env_pool=env_pool, envs_per_worker=envs_per_worker,
            ray_address=ray_address, on_episode_end=on_episode_end,
        )
        results.append(EnvResult.from_trajectories(entry.name, trajectories, pass_at=pass_at))
    return results
